//! The shop's domain: money, widgets, carts, orders and the identifiers that
//! name them. Plain types; validation happens once, in constructors.

use std::fmt;

use rand::Rng;
use serde::Serialize;

use crate::error::Error;

// === Cents ===

/// An amount of money in US cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let dollars = abs / 100;
        // Thousands separators: $1,290.00.
        let digits = dollars.to_string();
        let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        write!(f, "{sign}${grouped}.{:02}", abs % 100)
    }
}

impl std::ops::Mul<i32> for Cents {
    type Output = Cents;
    fn mul(self, rhs: i32) -> Cents {
        Cents(self.0 * i64::from(rhs))
    }
}

impl std::iter::Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(iter: I) -> Cents {
        Cents(iter.map(|c| c.0).sum())
    }
}

// === identifiers ===

/// The random id in a shopper's `cart` cookie: 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CartId(String);

impl CartId {
    pub fn random() -> CartId {
        CartId(format!("{:032x}", rand::rng().random::<u128>()))
    }

    /// `None` for anything that is not an id this shop could have issued,
    /// so a tampered cookie is simply ignored.
    pub fn parse(s: &str) -> Option<CartId> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| CartId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The public reference of an order (`W-7KQ2M9XD4P`), also its page's URL.
/// A reference, not a credential: the order is shown only to the cart that
/// placed it (and the code is random besides).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct OrderCode(String);

/// No 0/O or 1/I: codes are read aloud on the phone.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 10;

impl OrderCode {
    pub fn random() -> OrderCode {
        let mut rng = rand::rng();
        let tail: String = (0..CODE_LEN)
            .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
            .collect();
        OrderCode(format!("W-{tail}"))
    }

    pub fn parse(s: &str) -> Result<OrderCode, Error> {
        let tail = s.strip_prefix("W-").unwrap_or("");
        if tail.len() == CODE_LEN && tail.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
            Ok(OrderCode(s.to_string()))
        } else {
            Err(Error::NotFound {
                what: "order",
                key: s.to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client's `Idempotency-Key`: a retried checkout of one cart carrying
/// the same key places one order. It counts within that cart only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 200;

    pub fn new(s: &str) -> Result<IdempotencyKey, Error> {
        let s = s.trim();
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Invalid {
                field: "Idempotency-Key",
                message: format!(
                    "must be 1 to {} visible ASCII characters (a UUID is a good choice)",
                    Self::MAX_LEN
                ),
            });
        }
        Ok(IdempotencyKey(s.to_string()))
    }

    /// A fresh key, for the checkout form to submit with (a double click
    /// then places one order).
    pub fn random() -> IdempotencyKey {
        IdempotencyKey(format!("form-{:032x}", rand::rng().random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many of one widget a cart line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Quantity(i32);

impl Quantity {
    pub const MAX: i32 = 99;

    pub fn new(n: i64) -> Result<Quantity, Error> {
        match i32::try_from(n) {
            Ok(q) if (1..=Self::MAX).contains(&q) => Ok(Quantity(q)),
            _ => Err(Error::Invalid {
                field: "quantity",
                message: format!("must be between 1 and {} (got {n})", Self::MAX),
            }),
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// Who an order is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub name: String,
    pub email: String,
}

impl Customer {
    pub fn new(name: &str, email: &str) -> Result<Customer, Error> {
        let name = name.trim();
        let email = email.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::Invalid {
                field: "name",
                message: "enter your name (up to 100 characters)".into(),
            });
        }
        let plausible = email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
            && !email.chars().any(char::is_whitespace);
        if !plausible {
            return Err(Error::Invalid {
                field: "email",
                message: "enter an email address such as ada@example.com".into(),
            });
        }
        Ok(Customer {
            name: name.to_string(),
            email: email.to_string(),
        })
    }
}

// === catalogue, cart, order ===

#[derive(Debug, Clone, Serialize)]
pub struct Widget {
    pub slug: String,
    pub name: String,
    pub tagline: String,
    pub description: String,
    pub price_cents: Cents,
    pub stock: i32,
    pub color: String,
    pub shape: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CartLine {
    pub slug: String,
    pub name: String,
    pub color: String,
    pub shape: String,
    pub unit_price_cents: Cents,
    pub quantity: i32,
    /// In stock right now; checkout fails when a line asks for more.
    pub stock: i32,
}

impl CartLine {
    pub fn subtotal(&self) -> Cents {
        self.unit_price_cents * self.quantity
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cart {
    pub lines: Vec<CartLine>,
}

impl Cart {
    pub fn total(&self) -> Cents {
        self.lines.iter().map(CartLine::subtotal).sum()
    }

    pub fn item_count(&self) -> i64 {
        self.lines.iter().map(|l| i64::from(l.quantity)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderLine {
    pub slug: String,
    pub name: String,
    pub unit_price_cents: Cents,
    pub quantity: i32,
}

impl OrderLine {
    pub fn subtotal(&self) -> Cents {
        self.unit_price_cents * self.quantity
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub code: OrderCode,
    pub customer_name: String,
    pub email: String,
    pub total_cents: Cents,
    /// The shop instance that placed it.
    pub placed_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub lines: Vec<OrderLine>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_read_like_prices() {
        assert_eq!(Cents(0).to_string(), "$0.00");
        assert_eq!(Cents(499).to_string(), "$4.99");
        assert_eq!(Cents(129_000).to_string(), "$1,290.00");
        assert_eq!(Cents(123_456_789).to_string(), "$1,234,567.89");
        assert_eq!(Cents(-250).to_string(), "-$2.50");
    }

    #[test]
    fn cart_ids_round_trip_and_reject_tampering() {
        let id = CartId::random();
        assert_eq!(CartId::parse(id.as_str()), Some(id));
        assert_eq!(CartId::parse("not-a-cart"), None);
        assert_eq!(
            CartId::parse(&"A".repeat(32)),
            None,
            "uppercase is not ours"
        );
        assert_eq!(CartId::parse("'; DROP TABLE carts; --"), None);
    }

    #[test]
    fn order_codes_round_trip() {
        let code = OrderCode::random();
        assert_eq!(OrderCode::parse(code.as_str()).ok(), Some(code));
        assert!(
            OrderCode::parse("W-0000000000").is_err(),
            "0 is not in the alphabet"
        );
        assert!(OrderCode::parse("42").is_err());
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(Quantity::new(1).map(Quantity::get).ok(), Some(1));
        assert_eq!(Quantity::new(99).map(Quantity::get).ok(), Some(99));
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(100).is_err());
        assert!(Quantity::new(i64::MAX).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::new("3f1c2a9e-5b7d-4c1e-9a2b-7d6e5f4c3b2a").is_ok());
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("with space").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(201)).is_err());
    }

    #[test]
    fn customers_need_a_name_and_a_plausible_email() {
        assert!(Customer::new("Ada Lovelace", "ada@example.com").is_ok());
        assert!(Customer::new("  ", "ada@example.com").is_err());
        assert!(Customer::new("Ada", "ada").is_err());
        assert!(Customer::new("Ada", "@example.com").is_err());
        assert!(Customer::new("Ada", "ada@localhost").is_err());
    }

    #[test]
    fn totals_add_up() {
        let line = |price, quantity| CartLine {
            slug: "s".into(),
            name: "n".into(),
            color: "#000000".into(),
            shape: "circle".into(),
            unit_price_cents: Cents(price),
            quantity,
            stock: 10,
        };
        let cart = Cart {
            lines: vec![line(1250, 2), line(499, 3)],
        };
        assert_eq!(cart.total(), Cents(2500 + 1497));
        assert_eq!(cart.item_count(), 5);
    }
}
