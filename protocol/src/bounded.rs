//! Decoding within bounds. Postcard bounds a length by the bytes left in the frame, but not what
//! the bytes become: a list of one-byte elements can take sixty times its wire size in memory.
//! Every variable-length field of a message (lists, names, shapes, byte payloads) is therefore
//! deserialized through these functions, which refuse a field longer than it may be (a name over
//! [`MAX_NAME_BYTES`], a shape over [`MAX_RANK`] dimensions, a list over [`MAX_LIST`] entries)
//! and charge what they allocate to the decode's budget. [`crate::decode`] sets that budget from
//! the frame's length ([`budget_for`]), so a message can never take more memory than a small
//! multiple of its frame, whatever its bytes say.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Longest tensor, software, adapter or run name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most dimensions of a tensor's shape.
pub const MAX_RANK: usize = 8;
/// Most entries of any list in a message.
pub const MAX_LIST: usize = 1 << 20;

thread_local! {
    /// Bytes the decode in progress may still allocate (no bound outside a decode).
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Why the decode in progress was refused by a bound (postcard keeps no custom message).
    static WHY: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The memory a frame of `frame` bytes may decode to: twice its length (the payloads, which
/// decode one to one, and the structures around them) plus 1 MiB for small messages.
pub fn budget_for(frame: usize) -> usize {
    frame.saturating_mul(2).saturating_add(1 << 20)
}

/// Runs `decode` with `bytes` to allocate, and says why a bound refused it if one did; the
/// previous budget is restored after.
pub(crate) fn within<R>(bytes: usize, decode: impl FnOnce() -> R) -> (R, Option<String>) {
    let previous = LEFT.with(|l| l.replace(bytes));
    WHY.with(|w| w.borrow_mut().take());
    let r = decode();
    LEFT.with(|l| l.set(previous));
    (r, WHY.with(|w| w.borrow_mut().take()))
}

/// A refusal by a bound, kept for [`within`] to report.
fn refuse<E: Error>(why: String) -> E {
    WHY.with(|w| *w.borrow_mut() = Some(why.clone()));
    E::custom(why)
}

/// Takes `bytes` from the decode's budget.
fn charge<E: Error>(bytes: usize) -> Result<(), E> {
    LEFT.with(|l| {
        let left = l.get();
        if bytes > left {
            return Err(refuse(
                "the message decodes to more memory than its frame allows".into(),
            ));
        }
        l.set(left - bytes);
        Ok(())
    })
}

struct ListVisitor<T> {
    max: usize,
    what: &'static str,
    of: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} of at most {} entries", self.what, self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_long = |n: usize| {
            refuse::<A::Error>(format!(
                "{} of {n} entries, more than the {} allowed",
                self.what, self.max
            ))
        };
        let hint = seq.size_hint().unwrap_or(0);
        if hint > self.max {
            return Err(too_long(hint));
        }
        let each = std::mem::size_of::<T>().max(1);
        let mut v = Vec::with_capacity(hint.min(4096 / each));
        while let Some(x) = seq.next_element()? {
            if v.len() == self.max {
                return Err(too_long(v.len() + 1));
            }
            charge(each)?;
            v.push(x);
        }
        Ok(v)
    }
}

/// A list of at most [`MAX_LIST`] entries.
pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(ListVisitor {
        max: MAX_LIST,
        what: "a list",
        of: PhantomData,
    })
}

/// A tensor shape of at most [`MAX_RANK`] dimensions.
pub fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(ListVisitor {
        max: MAX_RANK,
        what: "a shape",
        of: PhantomData,
    })
}

/// A name of at most [`MAX_NAME_BYTES`] bytes.
pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() > MAX_NAME_BYTES {
        return Err(refuse(format!(
            "a name of {} bytes, more than the {MAX_NAME_BYTES} allowed",
            s.len()
        )));
    }
    charge(s.len())?;
    Ok(s)
}

/// A string of any length the frame holds, charged to the budget.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    charge(s.len())?;
    Ok(s)
}

/// A byte payload, charged to the budget.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let b = serde_bytes::ByteBuf::deserialize(d)?;
    charge(b.len())?;
    Ok(b.into_vec())
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Msg {
        #[serde(deserialize_with = "name")]
        name: String,
        #[serde(deserialize_with = "shape")]
        shape: Vec<u64>,
        #[serde(deserialize_with = "list")]
        items: Vec<Option<u8>>,
    }

    fn decode(bytes: &[u8], budget: usize) -> Result<Msg, String> {
        match within(budget, || postcard::from_bytes(bytes)) {
            (Ok(m), None) => Ok(m),
            (_, Some(why)) => Err(why),
            (Err(e), None) => Err(e.to_string()),
        }
    }

    #[test]
    fn fields_within_their_bounds_decode() {
        let m = Msg {
            name: "w".into(),
            shape: vec![2, 3],
            items: vec![Some(1), None],
        };
        let b = postcard::to_stdvec(&m).unwrap();
        assert_eq!(decode(&b, budget_for(b.len())).unwrap(), m);
    }

    #[test]
    fn a_long_name_or_shape_is_refused() {
        let long = Msg {
            name: "x".repeat(MAX_NAME_BYTES + 1),
            shape: vec![],
            items: vec![],
        };
        let b = postcard::to_stdvec(&long).unwrap();
        assert!(decode(&b, usize::MAX)
            .unwrap_err()
            .contains("a name of 257 bytes"));
        let deep = Msg {
            name: String::new(),
            shape: vec![1; MAX_RANK + 1],
            items: vec![],
        };
        let b = postcard::to_stdvec(&deep).unwrap();
        assert!(decode(&b, usize::MAX)
            .unwrap_err()
            .contains("a shape of 9 entries"));
    }

    #[test]
    fn one_byte_entries_cannot_amplify_past_the_budget() {
        // A million one-byte `None`s: 1 MB on the wire, 2 MB as `Option<u8>`s.
        let m = Msg {
            name: String::new(),
            shape: vec![],
            items: vec![None; 1_000_000],
        };
        let b = postcard::to_stdvec(&m).unwrap();
        let why = decode(&b, 1_500_000).unwrap_err();
        assert!(why.contains("more memory than its frame"), "{why}");
        assert!(decode(&b, 2_100_000).is_ok(), "within it");
        // Outside a decode nothing is charged.
        assert!(postcard::from_bytes::<Msg>(&b).is_ok());
    }
}
