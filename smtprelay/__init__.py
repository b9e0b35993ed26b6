"""smtprelay: an asynchronous SMTP relay that accepts mail durably and delivers it later."""

__version__ = "0.1.0"
