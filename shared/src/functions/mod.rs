//! The typed table of the function library's functions: for each function of
//! `redis/flashcart.lua`, its name, whether it writes, its keys and arguments in the order
//! the Lua reads them, and how its reply decodes — in one place, as mini-redis keeps a
//! command's parse, apply and encode together. Every caller goes through it: [`Inventory`]
//! (its operations and its recovery calls, one `call` each), settlement's dead-letter
//! commands with [`command`] and [`decode`] over their own connection.
//!
//! - [`Spec`]: a function's declaration ([`TABLE`] lists them all; a test checks that the
//!   library registers exactly these, with these flags, reading exactly these keys and
//!   arguments);
//! - [`Function`]: one call of a function, built from domain values; its keys and arguments
//!   are arrays as long as its [`Spec`] says (checked when the call is compiled);
//! - [`Reply`]: the library's flat reply, `code, replayed, fields...`.
//!
//! The functions, grouped as the library groups them: [`reserve`] (the deduct and a
//! reservation's release), [`orders`] (orders and the idempotency claims that bind their keys),
//! [`payments`], [`stock`] (loads, levels, timers) and [`recovery`] (settlement's side of the
//! fence).
//!
//! [`Inventory`]: crate::Inventory

pub mod orders;
pub mod payments;
pub mod recovery;
pub mod reserve;
pub mod stock;

use crate::exec::Value;
use crate::ids::RequestId;
use crate::keys::KeySchema;
use crate::problem::Rejection;

/// Every decoder answers a value or a [`Rejection`].
pub type Result<T, E = Rejection> = std::result::Result<T, E>;

/// What a function may do, which decides how it is registered, called and fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: registered with the `no-writes` flag and called with `FCALL_RO` (so a
    /// replica may serve it); never fenced.
    Read,
    /// Writes a decision: takes its partition's ledger guard as its last key and answers
    /// `fenced`, writing nothing, while the partition waits for settlement's check.
    Write,
    /// Settlement's side of the fence (set the guard, lift the fence): writes, and is never
    /// fenced itself.
    Fence,
    /// Writes what the ledger knows into a fenced partition: takes the guard as its last key
    /// and answers `not_fenced`, writing nothing, anywhere else.
    Restore,
}

impl Access {
    /// Whether the function is registered read-only (`flags = { 'no-writes' }`).
    pub const fn read_only(self) -> bool {
        matches!(self, Access::Read)
    }

    /// The command that calls it.
    pub const fn command(self) -> &'static str {
        if self.read_only() {
            "FCALL_RO"
        } else {
            "FCALL"
        }
    }
}

/// A function as the library declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The name it is registered under.
    pub name: &'static str,
    /// What it may do.
    pub access: Access,
    /// Its keys (`KEYS`), in order: names for people, the count for the wire.
    pub keys: &'static [&'static str],
    /// Its arguments (`ARGV`), in order.
    pub args: &'static [&'static str],
}

/// Every function of the library, in the order it registers them.
pub const TABLE: &[Spec] = &[
    reserve::RESERVE,
    reserve::RESERVE_AT,
    reserve::RESERVE_FINISH,
    reserve::RELEASE,
    orders::ORDER_CREATE,
    orders::IDEM_CLAIM,
    orders::IDEM_RELEASE,
    orders::ORDER_GET,
    payments::PAYMENT,
    orders::ORDER_CANCEL,
    orders::REFUND,
    stock::STOCK,
    stock::LOAD,
    stock::DUE,
    recovery::GUARD,
    recovery::VERIFY,
    recovery::FENCE_STATE,
    recovery::RESTORE_SKU,
    recovery::RESTORE_RESERVATION,
    recovery::RESTORE_DECISION,
    recovery::RESTORE_ORDER,
    recovery::RESTORE_PAYMENT,
    recovery::RESTORE_COUNT,
    recovery::RESTORE_STREAM,
    VERSION,
];

/// One call of a library function: its [`Spec`], its keys and arguments built from domain
/// values (`KEYS` and `ARGS` long), and the decoder of its reply.
pub trait Function<const KEYS: usize, const ARGS: usize> {
    /// The function's declaration; its `keys` and `args` are `KEYS` and `ARGS` long.
    const SPEC: Spec;
    /// What its reply decodes to.
    type Output;
    /// The keys, in the order of [`Spec::keys`].
    fn keys(&self, schema: &KeySchema) -> [String; KEYS];
    /// The arguments, in the order of [`Spec::args`].
    fn args(&self, schema: &KeySchema) -> [String; ARGS];
    /// Decodes a reply (`fenced` never reaches a decoder: [`decode`] answers it).
    ///
    /// # Errors
    /// The rejection the reply stands for, or [`Rejection::Unavailable`] for a reply the
    /// decoder does not know.
    fn decode(&self, reply: Reply) -> Result<Self::Output>;
}

/// The `request` argument of a function the edge calls: the id of the HTTP request deciding,
/// which the event the call appends carries; empty when no request is behind the call.
pub(crate) fn request_arg(request: Option<&RequestId>) -> String {
    request.map(|id| id.as_str().to_owned()).unwrap_or_default()
}

/// The command line of `call`: the command (`FCALL` or `FCALL_RO`) and its arguments
/// (name, key count, keys, arguments).
pub fn command<F, const KEYS: usize, const ARGS: usize>(
    call: &F,
    schema: &KeySchema,
) -> (&'static str, Vec<String>)
where
    F: Function<KEYS, ARGS>,
{
    const {
        assert!(
            F::SPEC.keys.len() == KEYS && F::SPEC.args.len() == ARGS,
            "a function's keys and arguments are as many as its spec names"
        );
    }
    let mut line = Vec::with_capacity(2 + KEYS + ARGS);
    line.push(F::SPEC.name.to_owned());
    line.push(KEYS.to_string());
    line.extend(call.keys(schema));
    line.extend(call.args(schema));
    (F::SPEC.access.command(), line)
}

/// Decodes the flat reply to `call`.
///
/// # Errors
/// [`Rejection::Fenced`] when a writing function found its partition fenced; else what the
/// function's decoder answers.
pub fn decode<F, const KEYS: usize, const ARGS: usize>(
    call: &F,
    values: Vec<Value>,
) -> Result<F::Output>
where
    F: Function<KEYS, ARGS>,
{
    let reply = Reply::parse(values)?;
    // Every function that writes answers `fenced` (having written nothing) while its
    // partition waits for settlement's check after a restart.
    if reply.code == "fenced" {
        return Err(Rejection::Fenced);
    }
    call.decode(reply)
}

/// A function's flat reply: `code`, `replayed` (0|1), then fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status word.
    pub code: String,
    /// Whether the reply replays an earlier decision.
    pub replayed: bool,
    fields: Vec<Value>,
}

impl Reply {
    /// Splits a flat reply.
    ///
    /// # Errors
    /// When it has no code.
    pub fn parse(values: Vec<Value>) -> Result<Self> {
        let mut it = values.into_iter();
        let code = it
            .next()
            .and_then(|v| v.text())
            .ok_or_else(|| bad_reply("no code"))?;
        let replayed = it.next().and_then(|v| v.int()).unwrap_or(0) == 1;
        Ok(Self {
            code,
            replayed,
            fields: it.collect(),
        })
    }

    /// Field `i` as text.
    ///
    /// # Errors
    /// When the reply has no such field.
    pub fn text(&self, i: usize) -> Result<String> {
        self.fields
            .get(i)
            .and_then(Value::text)
            .ok_or_else(|| bad_reply(&format!("{}: field {i}", self.code)))
    }

    /// Field `i` as an unsigned number.
    ///
    /// # Errors
    /// When the reply has no such field, or it is not one.
    pub fn uint(&self, i: usize) -> Result<u64> {
        self.optional_uint(i)
            .ok_or_else(|| bad_reply(&format!("{}: field {i}", self.code)))
    }

    /// Field `i` as a `u16` (segment numbers and counts).
    ///
    /// # Errors
    /// When the reply has no such field, or it is not one.
    pub fn u16(&self, i: usize) -> Result<u16> {
        u16::try_from(self.uint(i)?).map_err(|_| self.unexpected())
    }

    /// Field `i` when the reply has it (optional trailing fields).
    pub fn optional_uint(&self, i: usize) -> Option<u64> {
        self.fields
            .get(i)
            .and_then(Value::int)
            .and_then(|n| u64::try_from(n).ok())
    }

    /// Field `i` as text when the reply has it.
    pub fn optional_text(&self, i: usize) -> Option<String> {
        self.fields.get(i).and_then(Value::text)
    }

    /// How many fields follow the code.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no fields follow the code.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The rejection for a reply its decoder does not expect.
    pub fn unexpected(&self) -> Rejection {
        unexpected_code(&self.code)
    }
}

/// The rejection for a reply code nobody expects at that point.
pub(crate) fn unexpected_code(code: &str) -> Rejection {
    bad_reply(&format!("unexpected code {code}"))
}

fn bad_reply(what: &str) -> Rejection {
    Rejection::Unavailable(format!(
        "unexpected reply from the function library: {what}"
    ))
}

/// `fc_version`: the version of the loaded library (compared with
/// [`crate::library::version`] before any other call). Its reply is the version alone.
pub const VERSION: Spec = Spec {
    name: "fc_version",
    access: Access::Read,
    keys: &[],
    args: &[],
};

/// A call of `fc_version`.
#[derive(Debug, Clone, Copy)]
pub struct Version;

impl Function<0, 0> for Version {
    const SPEC: Spec = VERSION;
    type Output = String;
    fn keys(&self, _: &KeySchema) -> [String; 0] {
        []
    }
    fn args(&self, _: &KeySchema) -> [String; 0] {
        []
    }
    fn decode(&self, reply: Reply) -> Result<String> {
        // The reply's one value, which `Reply` reads as its code.
        Ok(reply.code)
    }
}

#[cfg(test)]
mod tests;
