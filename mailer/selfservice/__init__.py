"""The readers' own pages: sign up with double opt-in, then tune, pause or
stop their digests, behind ``[web] self_service = true``.

``links`` signs the links (manage, confirm) and the forms' CSRF tokens;
``profile`` checks what a reader chose with the rules of ``check-config``;
``forms`` reads and refills the HTML forms; ``preview`` tries a query on
the last 30 days' papers as ``mailer subs try`` does; ``mails`` composes the
confirmation and manage-link notices for the outbox; ``pages`` renders the
templates in ``templates/web``; ``limits`` counts sign-ups per hour; ``app``
is the aiohttp side, hooked into the unsubscribe endpoint's server
(mailer.web); ``admin`` is what ``mailer subs`` does to web subscribers.
"""
