"""``python3 -m smtprelay.sendmail``, for a PHP ``sendmail_path``: messages name it
``sendmail``, as argv[0] here is this file."""

from smtprelay.sendmail.command import main

if __name__ == "__main__":
    main(prog="sendmail")
