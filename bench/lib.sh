# Shared by the bench scripts (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A private Dovecot's configuration: POP3 in plaintext on HOST:PORT, users from BASE/users with
# SHA512-CRYPT hashes, each user's Maildir at its home.
#   dovecot_conf BASE HOST PORT > BASE/dovecot.conf
dovecot_conf() {
  cat <<CONF
base_dir = $1/run
state_dir = $1/state
log_path = $1/log/dovecot.log
protocols = pop3
listen = $2
ssl = no
disable_plaintext_auth = no
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u $1/users
}
userdb {
  driver = passwd-file
  args = username_format=%n $1/users
}
first_valid_uid = 1000
last_valid_uid = 0
mail_location = maildir:~
service pop3-login {
  inet_listener pop3 {
    address = $2
    port = $3
  }
  inet_listener pop3s {
    port = 0
  }
}
CONF
}
