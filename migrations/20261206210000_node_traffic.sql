-- What a proxy last reported of its traffic: per backend, the answers by
-- status class, failed tries by kind and a latency histogram over its
-- last window (tandem_core::traffic::BackendTraffic, as JSON).
ALTER TABLE nodes ADD COLUMN traffic jsonb NOT NULL DEFAULT '[]';
