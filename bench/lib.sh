# Shared by the bench scripts (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A private Dovecot's configuration: POP3 in plaintext on HOST:PORT, users from BASE/users (the
# scheme is in each hash, e.g. {SHA512-CRYPT} or {PLAIN}), each user's Maildir at its home.
# With TLS_PORT CERT KEY it also serves implicit TLS there. Processes are tuned for speed as
# Dovecot's documentation advises: login processes in high-performance mode (service_count = 0,
# one per core) and pop3 processes reused (service_count = 100), with limits high enough for
# ten thousand sessions; no authentication cache (Pillarbox has none either).
#   dovecot_conf BASE HOST PORT [TLS_PORT CERT KEY] > BASE/dovecot.conf
dovecot_conf() {
  local tls_port=${4:-0}
  cat <<CONF
base_dir = $1/run
state_dir = $1/state
log_path = $1/log/dovecot.log
protocols = pop3
listen = $2
disable_plaintext_auth = no
auth_cache_size = 0
passdb {
  driver = passwd-file
  args = username_format=%u $1/users
}
userdb {
  driver = passwd-file
  args = username_format=%n $1/users
}
first_valid_uid = 1000
last_valid_uid = 0
mail_location = maildir:~
default_process_limit = 12000
default_client_limit = 30000
default_vsz_limit = 1G
protocol pop3 {
  mail_max_userip_connections = 100000
}
service pop3-login {
  service_count = 0
  process_min_avail = $(nproc)
  client_limit = 30000
  inet_listener pop3 {
    address = $2
    port = $3
  }
  inet_listener pop3s {
    address = $2
    port = $tls_port
  }
}
service pop3 {
  service_count = 100
  process_limit = 12000
}
service auth {
  client_limit = 30000
}
service anvil {
  client_limit = 30000
}
CONF
  if [ -n "${5:-}" ]; then
    printf 'ssl = yes\nssl_cert = <%s\nssl_key = <%s\n' "$5" "$6"
  else
    echo 'ssl = no'
  fi
}
