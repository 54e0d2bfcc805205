-- Pools gain the proxy's HTTP limits (tandem_core::PoolConfig's
-- max_request_body_bytes, upstream_idle_timeout_ms, tunnel_idle_timeout_ms).
-- Settings are stored as JSON: rows written before this get the defaults
-- written in, so what the store returns is what proxies apply. A value
-- already present wins (the right operand of || does).
UPDATE pools
SET settings = jsonb_build_object(
        'max_request_body_bytes', 10485760,
        'upstream_idle_timeout_ms', 4000,
        'tunnel_idle_timeout_ms', 300000
    ) || settings;
