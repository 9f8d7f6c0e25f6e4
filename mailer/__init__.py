"""mailer: email digests and alerts for new research papers."""

__version__ = "0.1.0"
