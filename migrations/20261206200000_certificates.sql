-- TLS certificates served by the proxies' TLS listeners. The private key
-- is stored sealed (AES-256-GCM under the key the control replicas read
-- from TANDEM_SECRETS_KEY_FILE, the certificate's name as associated
-- data), so neither this table nor the change log, their replicas or
-- their backups hold it in the clear.
CREATE TABLE certificates (
    name       text        PRIMARY KEY,
    chain_pem  text        NOT NULL,
    key_sealed bytea       NOT NULL,
    revision   bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The certificates a proxy reports serving on its TLS listener.
ALTER TABLE nodes ADD COLUMN certificates jsonb NOT NULL DEFAULT '[]';
