-- Per route: redirect plain HTTP to https (308), and the HSTS max-age sent
-- on answers over TLS (0: no Strict-Transport-Security field).
ALTER TABLE routes ADD COLUMN redirect_https boolean NOT NULL DEFAULT false;
ALTER TABLE routes ADD COLUMN hsts_max_age_s integer NOT NULL DEFAULT 0 CHECK (hsts_max_age_s >= 0);
