-- An Idempotency-Key names a retry of one cart's checkout; it is not a
-- credential that fetches whatever order it placed. Unique per cart, so the
-- same key sent with another cart is another checkout, never a replay of
-- someone else's order.
ALTER TABLE orders DROP CONSTRAINT orders_idempotency_key_key;
ALTER TABLE orders
    ADD CONSTRAINT orders_cart_idempotency_key UNIQUE (cart_id, idempotency_key);
