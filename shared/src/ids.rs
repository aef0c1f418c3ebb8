//! Validated identifiers and quantities: every value that reaches Redis passes through here.
//!
//! Each type checks length and charset once, at the edge of the system, so the rest of the
//! code (and every Redis key built from these values) can rely on them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::Partition;

/// Why an input was refused. `field` names the offending input as the HTTP contract does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The input field, e.g. `sku` or `Idempotency-Key`.
    pub field: &'static str,
    /// A human-readable reason, safe to show to the caller.
    pub reason: String,
}

impl ValidationError {
    /// A validation error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The characters an identifier may hold, written once as the body of a regular-expression
/// character class (ranges and single characters; a `-` last is itself). Validation reads it
/// here ([`Charset::allows`], through a set of the ASCII characters built from the text at
/// compile time); the OpenAPI document's `pattern` is built from the same text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Charset {
    class: &'static str,
    /// Whether each ASCII character is in the class (a table, not a 128-bit mask: wasm has
    /// no 128-bit shift, so a mask test would be a library call per character).
    ascii: [bool; 128],
}

impl Charset {
    /// `A-Z a-z 0-9 - _ .`: SKUs, and the SKU inside reservation and order ids.
    pub const ID: Charset = Charset::new("A-Za-z0-9._-");
    /// [`Charset::ID`] and `: @`: buyers.
    pub const BUYER: Charset = Charset::new("A-Za-z0-9._:@-");
    /// [`Charset::ID`] and `:`: payment provider event ids.
    pub const EVENT: Charset = Charset::new("A-Za-z0-9._:-");
    /// Visible ASCII, `!` to `~`: `Idempotency-Key` values.
    pub const VISIBLE: Charset = Charset::new("!-~");

    /// The set a character class's body names: `a-z` is a range, any other character is
    /// itself.
    const fn new(class: &'static str) -> Self {
        let bytes = class.as_bytes();
        let mut ascii = [false; 128];
        let mut i = 0;
        while i < bytes.len() {
            let (low, high) = if i + 2 < bytes.len() && bytes[i + 1] == b'-' {
                i += 3;
                (bytes[i - 3], bytes[i - 1])
            } else {
                i += 1;
                (bytes[i - 1], bytes[i - 1])
            };
            let mut c = low;
            while c <= high {
                assert!(c < 128, "a charset holds ASCII only");
                ascii[c as usize] = true;
                c += 1;
            }
        }
        Self { class, ascii }
    }

    /// The character class's body, e.g. `A-Za-z0-9._-`.
    pub fn class(self) -> &'static str {
        self.class
    }

    /// Whether `c` is in the set.
    pub fn allows(self, c: char) -> bool {
        c.is_ascii() && self.allows_byte(c as u8)
    }

    /// Whether byte `b` is (an ASCII character) in the set.
    fn allows_byte(self, b: u8) -> bool {
        self.ascii.get(usize::from(b)).copied().unwrap_or(false)
    }

    /// A regular expression for 1 to `max_len` of these characters, not all dots: what
    /// [`check`] accepts. Unanchored, so that it can be embedded; it ends the text it matches.
    pub fn pattern(self, max_len: usize) -> String {
        format!("(?!\\.+$)[{}]{{1,{max_len}}}", self.class)
    }
}

/// Shows the class text (`Charset[A-Za-z0-9._-]`), not the table built from it.
impl fmt::Debug for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Charset[{}]", self.class)
    }
}

fn check(
    field: &'static str,
    value: &str,
    max_len: usize,
    charset: Charset,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_len} bytes"),
        ));
    }
    if value.bytes().all(|b| b == b'.') {
        // `.` and `..` are path segments: a URL holding them is normalised away, so such
        // an id could be created but never reached again.
        return Err(ValidationError::new(field, "must not consist of dots only"));
    }
    // Every allowed character is one ASCII byte: the first byte outside the set starts the
    // first character outside it.
    if let Some(at) = value.bytes().position(|b| !charset.allows_byte(b)) {
        let bad = value[at..].chars().next().unwrap_or_default();
        return Err(ValidationError::new(
            field,
            format!(
                "contains {bad:?}; allowed characters are [{}]",
                charset.class()
            ),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $charset:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`.
            ///
            /// # Errors
            /// When it is empty, longer than [`Self::MAX_LEN`] or has a character outside the charset.
            pub fn parse(value: &str) -> Result<Self, ValidationError> {
                check($field, value, $max, $charset)?;
                Ok(Self(value.to_owned()))
            }

            /// The characters it may hold.
            pub const CHARSET: Charset = $charset;

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        #[cfg(feature = "openapi")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                crate::schema::text($name::MAX_LEN, &$name::CHARSET.pattern($name::MAX_LEN))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                check($field, &value, $max, $charset)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A stock-keeping unit: 1–64 bytes of `A-Z a-z 0-9 - _ .`, not only dots.
    SkuId, "sku", 64, Charset::ID
);
string_id!(
    /// A buyer: 1–128 bytes of `A-Z a-z 0-9 - _ . : @`, not only dots.
    BuyerId, "buyer", 128, Charset::BUYER
);
string_id!(
    /// An `Idempotency-Key` header value: 1–255 bytes of visible ASCII (`!` to `~`), not
    /// only dots.
    IdempotencyKey, "Idempotency-Key", 255, Charset::VISIBLE
);
string_id!(
    /// A payment provider's event id: 1–255 bytes of `A-Z a-z 0-9 - _ . :`, not only dots.
    PspEventId, "event_id", 255, Charset::EVENT
);
string_id!(
    /// The id of one HTTP request, carried in `x-request-id` from the edge into the Redis
    /// event it decides and the ledger row that settles it: 1–64 bytes of
    /// `A-Z a-z 0-9 - _ . :`, not only dots.
    RequestId, "x-request-id", 64, Charset::EVENT
);

impl RequestId {
    /// The header that carries it, in requests and answers.
    pub const HEADER: &'static str = "x-request-id";

    /// A new id from 128 random bits, as 32 lower-case hex digits.
    pub fn from_random(bits: u128) -> Self {
        Self(format!("{bits:032x}"))
    }
}

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Validates a currency code.
    ///
    /// # Errors
    /// Unless it is exactly three ASCII upper-case letters.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ValidationError::new(
                "currency",
                "must be three upper-case letters (ISO 4217)",
            ))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "description": "ISO 4217: three upper-case letters.",
        })
    }
}

impl TryFrom<String> for Currency {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Units asked for in one reserve call: 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// The most units one call may reserve; larger asks are refused, not split.
    pub const MAX: u32 = 100;

    /// Validates a quantity.
    ///
    /// # Errors
    /// When it is 0 or above [`Quantity::MAX`].
    pub fn new(value: u64) -> Result<Self, ValidationError> {
        match u32::try_from(value) {
            Ok(v) if (1..=Self::MAX).contains(&v) => Ok(Self(v)),
            _ => Err(ValidationError::new(
                "quantity",
                format!("must be between 1 and {}", Self::MAX),
            )),
        }
    }

    /// The number of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

#[cfg(feature = "openapi")]
impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 1, "maximum": Quantity::MAX })
    }
}

impl TryFrom<u64> for Quantity {
    type Error = ValidationError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> u32 {
        value.0
    }
}

/// The token shared by a reservation and the order made from it: 16 hex digits derived from
/// the buyer and the idempotency key, so a retried reserve names the same reservation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldToken(String);

impl HoldToken {
    /// Its length: hex digits of 8 bytes.
    const LEN: usize = 16;

    /// Derives the token of a reserve request.
    pub fn derive(buyer: &BuyerId, key: &IdempotencyKey) -> Self {
        let digest = crate::digest(&[b"hold", buyer.as_str().as_bytes(), key.as_str().as_bytes()]);
        Self(hex::encode(&digest[..8]))
    }

    fn parse(value: &str) -> Option<Self> {
        (value.len() == Self::LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Self(value.to_owned()))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! placed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $field:literal) => {
        $(#[$doc])*
        ///
        /// The id carries everything needed to name the Redis keys its record touches (a
        /// cluster requires them declared up front): the partition, the hold token and the SKU.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name {
            partition: Partition,
            token: HoldToken,
            sku: SkuId,
        }

        impl $name {
            /// The id of the record in `partition` for `token` and `sku`.
            pub fn new(partition: Partition, token: HoldToken, sku: SkuId) -> Self {
                Self { partition, token, sku }
            }

            /// Parses `<prefix>_<partition>_<16 hex>_<sku>`.
            ///
            /// # Errors
            /// When the text is not of that form.
            pub fn parse(value: &str) -> Result<Self, ValidationError> {
                let bad = || {
                    ValidationError::new(
                        $field,
                        concat!("must look like ", $prefix, "_07_0123456789abcdef_<sku>"),
                    )
                };
                let rest = value.strip_prefix(concat!($prefix, "_")).ok_or_else(bad)?;
                let (part, rest) = rest.split_once('_').ok_or_else(bad)?;
                if part.is_empty() || part.len() > 4 || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let partition = Partition::new(part.parse().map_err(|_| bad())?);
                let (token, sku) = rest.split_once('_').ok_or_else(bad)?;
                let token = HoldToken::parse(token).ok_or_else(bad)?;
                let sku = SkuId::parse(sku).map_err(|_| bad())?;
                Ok(Self { partition, token, sku })
            }

            /// The partition that holds the record.
            pub fn partition(&self) -> Partition {
                self.partition
            }

            /// The hold token shared with the reservation or order.
            pub fn token(&self) -> &HoldToken {
                &self.token
            }

            /// The SKU.
            pub fn sku(&self) -> &SkuId {
                &self.sku
            }
        }

        #[cfg(feature = "openapi")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                // The longest partition [`Self::parse`] reads is 4 digits.
                let max = $prefix.len() + 1 + 4 + 1 + HoldToken::LEN + 1 + SkuId::MAX_LEN;
                let pattern = format!(
                    "{}_[0-9]{{1,4}}_[0-9a-f]{{{}}}_{}",
                    $prefix,
                    HoldToken::LEN,
                    SkuId::CHARSET.pattern(SkuId::MAX_LEN)
                );
                crate::schema::text(max, &pattern)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!($prefix, "_{:02}_{}_{}"),
                    self.partition.index(),
                    self.token.as_str(),
                    self.sku
                )
            }
        }
    };
}

placed_id!(
    /// A reservation: `rsv_<partition>_<token>_<sku>`; the partition is where its stock lives.
    ReservationId, "rsv", "reservation_id"
);
placed_id!(
    /// An order: `ord_<partition>_<token>_<sku>`; made from the reservation with the same token.
    OrderId, "ord", "order_id"
);

impl ReservationId {
    /// The id of the order made from this reservation (same partition, token and SKU).
    pub fn order_id(&self) -> OrderId {
        OrderId::new(self.partition, self.token.clone(), self.sku.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_charset_holds_exactly_the_characters_its_class_names() {
        let id = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        let cases: [(Charset, &dyn Fn(char) -> bool); 4] = [
            (Charset::ID, &id),
            (Charset::BUYER, &|c| id(c) || ":@".contains(c)),
            (Charset::EVENT, &|c| id(c) || c == ':'),
            (Charset::VISIBLE, &|c| ('!'..='~').contains(&c)),
        ];
        for (charset, expected) in cases {
            for c in (0..0x3000).filter_map(char::from_u32) {
                assert_eq!(charset.allows(c), expected(c), "{charset:?} and {c:?}");
            }
        }
    }

    #[test]
    fn a_charset_shows_its_class_text() {
        assert_eq!(format!("{:?}", Charset::BUYER), "Charset[A-Za-z0-9._:@-]");
    }

    #[test]
    fn the_first_character_outside_the_charset_is_named_even_past_ascii() {
        let err = SkuId::parse("ab-ü-€").unwrap_err();
        assert!(err.reason.contains("contains 'ü'"), "{}", err.reason);
        let err = SkuId::parse("ab c").unwrap_err();
        assert!(err.reason.contains("contains ' '"), "{}", err.reason);
    }

    #[test]
    fn sku_accepts_bounded_charset() {
        assert!(SkuId::parse("sneaker-42_EU.9").is_ok());
        assert_eq!(SkuId::parse("").unwrap_err().reason, "must not be empty");
        assert!(SkuId::parse(&"a".repeat(64)).is_ok());
        assert!(SkuId::parse(&"a".repeat(65)).is_err());
        assert!(SkuId::parse("a b").is_err());
        assert!(SkuId::parse("a{b}").is_err());
        assert!(SkuId::parse("é").is_err());
        for dots in [".", "..", "..."] {
            assert_eq!(
                SkuId::parse(dots).unwrap_err().reason,
                "must not consist of dots only",
                "{dots}"
            );
        }
        assert!(SkuId::parse(".hidden").is_ok());
        assert!(SkuId::parse("v1..2").is_ok());
    }

    #[test]
    fn request_id_is_a_bounded_token_and_a_random_one_parses() {
        assert!(RequestId::parse("req-1.a:b_C").is_ok());
        assert!(RequestId::parse(&"r".repeat(64)).is_ok());
        assert!(RequestId::parse(&"r".repeat(65)).is_err());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse("x\r\ny").is_err());
        let random = RequestId::from_random(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(random.as_str(), "0123456789abcdef0011223344556677");
        assert_eq!(RequestId::parse(random.as_str()), Ok(random));
        assert_eq!(RequestId::from_random(1).as_str().len(), 32);
    }

    #[test]
    fn idempotency_key_is_visible_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::new(0).is_err());
        assert_eq!(Quantity::new(1).map(Quantity::get), Ok(1));
        assert!(Quantity::new(u64::from(Quantity::MAX)).is_ok());
        assert!(Quantity::new(u64::from(Quantity::MAX) + 1).is_err());
        assert!(Quantity::new(u64::MAX).is_err());
    }

    #[test]
    fn placed_ids_round_trip_and_reject_garbage() {
        let buyer = BuyerId::parse("alice").unwrap();
        let key = IdempotencyKey::parse("k1").unwrap();
        let sku = SkuId::parse("sneaker_42.eu").unwrap();
        let id = ReservationId::new(
            Partition::new(7),
            HoldToken::derive(&buyer, &key),
            sku.clone(),
        );
        let text = id.to_string();
        assert!(
            text.starts_with("rsv_07_") && text.ends_with("_sneaker_42.eu"),
            "{text}"
        );
        assert_eq!(ReservationId::parse(&text).unwrap().sku(), &sku);
        assert_eq!(ReservationId::parse(&text), Ok(id.clone()));
        assert_eq!(id.order_id().to_string(), text.replacen("rsv", "ord", 1));
        for bad in [
            "",
            "rsv_07",
            "rsv__0123456789abcdef_a",
            "ord_07_0123456789abcdef_a",
            "rsv_07_0123456789ABCDEF_a",
            "rsv_x7_0123456789abcdef_a",
            "rsv_07_0123_a",
            "rsv_07_0123456789abcdef",
            "rsv_07_0123456789abcdef_",
            "rsv_07_0123456789abcdef_a b",
        ] {
            assert!(ReservationId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hold_token_depends_on_buyer_and_key() {
        let a = BuyerId::parse("a").unwrap();
        let b = BuyerId::parse("b").unwrap();
        let k = IdempotencyKey::parse("k").unwrap();
        assert_eq!(HoldToken::derive(&a, &k), HoldToken::derive(&a, &k));
        assert_ne!(HoldToken::derive(&a, &k), HoldToken::derive(&b, &k));
    }

    #[test]
    fn currency() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }
}
