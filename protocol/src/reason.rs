//! Why something was refused: a [`Code`] a program can act on (tests, workers, `tessera
//! verify`) plus a bounded [`Text`] for people. Every refusal on the wire (`Error`, a rejected
//! verdict) and in the run log (rejections, departures, check outcomes, discarded steps) carries
//! one. The text is cut to [`MAX_TEXT_BYTES`] when it is made and refused beyond that when it is
//! decoded, so nothing a contributor sends can grow a log entry or a message past that bound.

use serde::{Deserialize, Deserializer, Serialize};

/// Longest text of a reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 512;

/// What kind of refusal or event a reason is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Code {
    // Frames and sessions.
    /// A frame that did not decode.
    MalformedFrame,
    /// A frame of another protocol version than the coordinator speaks: upgrade the
    /// contributor.
    ProtocolVersion,
    /// A message that does not belong at this point of the session.
    UnexpectedMessage,
    /// The handshake's proof did not verify.
    Handshake,
    /// A session message whose signature does not verify.
    BadSignature,
    /// A session message replayed or out of order.
    Sequence,
    /// A check found this identity's results wrong: it is refused from the run.
    Refused,
    /// The run's administrator banned this identity.
    Banned,
    /// A newer session of the same identity took over.
    Replaced,
    /// The contributor was silent for too long.
    Silent,
    /// The contributor left.
    Left,
    /// The connection closed.
    Disconnected,
    /// The contributor's memory budget or adapter cannot hold what the run needs.
    Budget,
    /// A lease that is not the sender's.
    NotYourLease,
    /// A kind of result that does not belong to this run's regime.
    WrongRegime,

    // Results.
    /// A unit, audit or request that is not open (anymore), or not for this connection.
    NotOpen,
    /// A result whose shape, tensor names or layout do not match the work.
    WrongShape,
    /// A result holding NaN or infinities.
    NotFinite,
    /// Gradient sums whose list of units does not match the work done.
    WrongUnits,
    /// A result computed from weights other than the unit's.
    WrongVersion,
    /// A whole-model update too close to another's: a copy, or a stale one sent again.
    Copy,
    /// A whole-model update whose loss on its own first batch did not fall enough.
    LossCheck,
    /// A whole-model update whose norm is several times the round's median.
    NormOutlier,
    /// A whole-model update that does significantly worse on the held-out sequences than the
    /// round's median update.
    HeldOut,

    // Checks.
    /// A check (replay or audit) found the checked results wrong.
    CheckFailed,
    /// A check found the first auditor wrong.
    AuditorWrong,
    /// No contributor could run a check.
    NoAuditor,
    /// A check's answers disagree and nobody decided.
    Disputed,
    /// A step's results were thrown away and the step runs again.
    Discarded,

    /// A free-text reason of a version-1 log entry (written before reasons had codes).
    Version1,

    // Limits (new codes go last: a code's place is its encoding).
    /// A frame or message longer than the connection may send at this point.
    TooLarge,
    /// The handshake was not done in time.
    TimedOut,
    /// Values beyond the run's bound (an activation larger than `max_activation`), or in an
    /// encoding other than the run's.
    OutOfRange,
    /// The run is invite-only and this identity is not invited.
    NotInvited,
    /// No work for this contributor in the round in progress (the round is at the run's most
    /// replicas, or at its share for identities still on probation): it waits for the next.
    NoSlot,
}

/// A text of at most [`MAX_TEXT_BYTES`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Text(String);

impl Text {
    /// `text`, cut at a character boundary to fit (ending in `…` when cut).
    pub fn new(text: impl Into<String>) -> Self {
        let mut s: String = text.into();
        if s.len() > MAX_TEXT_BYTES {
            let ellipsis = '…';
            let mut end = MAX_TEXT_BYTES - ellipsis.len_utf8();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push(ellipsis);
        }
        Text(s)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    /// Refuses a text over the bound before copying it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded;
        impl serde::de::Visitor<'_> for Bounded {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a text of at most {MAX_TEXT_BYTES} bytes")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text, E> {
                if s.len() > MAX_TEXT_BYTES {
                    return Err(E::custom(format!(
                        "a reason's text of {} bytes (at most {MAX_TEXT_BYTES})",
                        s.len()
                    )));
                }
                Ok(Text(s.to_owned()))
            }
        }
        d.deserialize_str(Bounded)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why: a code and a bounded text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// What kind.
    pub code: Code,
    /// For people.
    pub text: Text,
}

impl Reason {
    /// A reason of `code` with `text` (cut to [`MAX_TEXT_BYTES`]).
    pub fn new(code: Code, text: impl Into<String>) -> Self {
        Reason {
            code,
            text: Text::new(text),
        }
    }

    /// The same code, the text after `prefix: `.
    pub fn prefixed(&self, prefix: &str) -> Self {
        Reason::new(self.code, format!("{prefix}: {}", self.text))
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.text.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let r = Reason::new(Code::WrongShape, "é".repeat(400));
        assert!(r.text.as_str().len() <= MAX_TEXT_BYTES);
        assert!(r.text.as_str().ends_with('…'));
        let short = Reason::new(Code::Left, "left");
        assert_eq!(short.to_string(), "left");
    }

    #[test]
    fn a_text_over_the_bound_does_not_decode() {
        let long = postcard::to_stdvec(&(Code::Left, "x".repeat(MAX_TEXT_BYTES + 1))).unwrap();
        assert!(postcard::from_bytes::<Reason>(&long).is_err());
        let fits = postcard::to_stdvec(&(Code::Left, "x".repeat(MAX_TEXT_BYTES))).unwrap();
        let r: Reason = postcard::from_bytes(&fits).unwrap();
        assert_eq!(r.code, Code::Left);
    }

    #[test]
    fn prefixing_keeps_the_code() {
        let r = Reason::new(Code::NotFinite, "element 3 is NaN").prefixed("output");
        assert_eq!(r.code, Code::NotFinite);
        assert_eq!(r.to_string(), "output: element 3 is NaN");
    }
}
