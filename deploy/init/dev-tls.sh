#!/bin/sh
# The compose topology's one-shot `dev-tls` service: makes, once, what
# HTTPS needs in development, in the `dev-tls` volume (mounted at /tls):
#   secrets.key   the key the control replicas seal certificates' private
#                 keys under (TANDEM_SECRETS_KEY_FILE), 0600
#   ca.pem        a development CA (its key, ca.key, stays here)
#   shop.pem      a certificate it signs for localhost, shop.localhost,
#   shop.key      proxy-1, proxy-2 and 127.0.0.1, which `init` declares
#   components/   mTLS between Tandem's components (`tandemctl certs init`):
#                 ca.pem, and NAME.pem + NAME-key.pem for control-1..3,
#                 proxy-1..2, agent-1..2, admin and operator (ca-key.pem
#                 stays root's)
# Nothing is made again while the files exist; `docker compose down -v`
# forgets them. Development only: put real keys and certificates in place
# of these (tandemctl cert add) for anything else.
set -eu
cd /tls
umask 077
if [ ! -s secrets.key ]; then
  openssl rand -hex 32 > secrets.key
  echo "made secrets.key"
fi
if [ ! -s shop.pem ] || [ ! -s shop.key ] || [ ! -s ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.pem -days 825 -subj "/CN=Tandem compose development CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,DNS:shop.localhost,DNS:proxy-1,DNS:proxy-2,IP:127.0.0.1" \
    "basicConstraints=CA:FALSE" "extendedKeyUsage=serverAuth" > shop.ext
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out shop.key
  openssl req -new -key shop.key -subj /CN=localhost -out shop.csr
  openssl x509 -req -in shop.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 397 \
    -extfile shop.ext -out shop.pem 2>/dev/null
  rm -f shop.csr shop.ext
  echo "made a development CA (ca.pem) and the shop's certificate (shop.pem, shop.key)"
fi
if [ ! -s components/ca.pem ]; then
  tandemctl certs init /tls/components --force \
    --replica control-1 --replica control-2 --replica control-3 \
    --proxy proxy-1,proxy-2 --agent agent-1,agent-2
fi
chmod 755 components
chown -R tandem:tandem components
chown root:root components/ca-key.pem
chmod 644 ca.pem shop.pem
chmod 600 secrets.key ca.key shop.key
# The services run as the image's `tandem` user.
chown tandem:tandem secrets.key shop.key shop.pem ca.pem
echo "done"
