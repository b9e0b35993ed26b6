# The two commands of README.md:
#   make run   install into .venv and run the relay on 127.0.0.1:2525 (spool in ./var/)
#   make test  install everything the tests need and run them
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/smtprelay.toml

.PHONY: run test lint deps venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/smtprelay serve -c $(CONFIG)

# Debian tools the integration tests drive: swaks, systemd-analyze, fail2ban-regex, pflogsumm,
# haproxy, htpasswd (apache2-utils), php (mail() through smtprelay-sendmail), and postfix
# (a private instance as next hop; "No configuration" leaves /etc/postfix unset).
# swaks speaks TLS only with Net::SSLeay and IO::Socket::SSL, which it merely recommends.
# opendkim-tools: OpenDKIM's opendkim-testmsg verifies the relay's DKIM signatures.
DEBS := swaks libnet-ssleay-perl libio-socket-ssl-perl systemd fail2ban python3-systemd \
	procps pflogsumm haproxy apache2-utils postfix php-cli opendkim-tools
deps:
	@if ! command -v swaks >/dev/null || ! perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null \
	    || ! command -v fail2ban-regex >/dev/null \
	    || ! command -v systemd-analyze >/dev/null || ! command -v pflogsumm >/dev/null \
	    || ! [ -x /usr/sbin/haproxy ] || ! command -v htpasswd >/dev/null \
	    || ! [ -x /usr/sbin/postfix ] || ! command -v php >/dev/null \
	    || ! [ -x /usr/sbin/opendkim-testmsg ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBS) >/dev/null; \
	  else echo "missing tools: sudo apt-get install $(DEBS) (those tests will be skipped)"; fi; \
	fi

# mypy checks the tests with the same strict settings as the product (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy smtprelay tests
	$(BIN)/lint-imports

test: $(STAMP) deps lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
