"""The bounce mailbox: reading it (``mailbox``: Maildir, IMAP over TLS) and
understanding what is in it (``classify``: bounces, unsubscribe replies).
The pass stage that acts on it is mailer.pipeline.bounces."""
