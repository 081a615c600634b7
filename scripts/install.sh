#!/usr/bin/env bash
# Install dployr-agent on a server: a system user, a venv under /opt, a config in /etc,
# and the systemd unit, enabled and started. Run as root from a checkout of this repository.
#   sudo scripts/install.sh            # install or upgrade
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/opt/dployr-agent
CONFIG_DIR=/etc/dployr-agent
UNIT=/etc/systemd/system/dployr-agent.service

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install.sh: python3 (>= 3.11) is needed" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: python3 >= 3.11 is needed" >&2; exit 1; }

if ! id dployr >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/dployr-agent --shell /usr/sbin/nologin dployr
fi
if getent group docker >/dev/null; then
  usermod -aG docker dployr
fi

python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
"$PREFIX/venv/bin/pip" install -q .

install -d -m 0750 -o root -g dployr "$CONFIG_DIR"
if [ ! -f "$CONFIG_DIR/config.toml" ]; then
  install -m 0640 -o root -g dployr config.example.toml "$CONFIG_DIR/config.toml"
  sed -i 's|^# dir = ".dployr-state"|dir = "/var/lib/dployr-agent"|' "$CONFIG_DIR/config.toml"
fi
install -d -m 0755 /srv
install -m 0644 systemd/dployr-agent.service "$UNIT"

systemctl daemon-reload
systemctl enable dployr-agent.service
systemctl restart dployr-agent.service
echo "dployr-agent installed. The first admin's password is in the journal and in"
echo "/var/lib/dployr-agent/initial-admin-password:  journalctl -u dployr-agent | grep 'first admin'"
