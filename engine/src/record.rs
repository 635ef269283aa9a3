//! A pending timer as the engine holds it: its id and its schedule command
//! in one allocation, `[id length: u16 LE][id][command]`.
//!
//! Memory per pending timer is what bounds how many an engine can hold, so
//! this is kept to the record's own bytes plus a 2-byte prefix: the wheel's
//! entry holds just this pointer (no separate id allocation, no reference
//! count), and the wheel's index hashes and compares the id in place.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use chime_wire::MAX_ID_BYTES;

/// A timer's id and schedule command, in one allocation.
pub struct TimerRecord(Box<[u8]>);

const PREFIX: usize = 2;

impl TimerRecord {
    /// # Panics
    ///
    /// If `id` is longer than a `u16` can say — never for a validated id
    /// ([`MAX_ID_BYTES`] is far below).
    pub fn new(id: &[u8], command: &[u8]) -> Self {
        const _: () = assert!(MAX_ID_BYTES <= u16::MAX as usize);
        let len = u16::try_from(id.len()).expect("timer ids are validated to fit");
        let mut bytes = Vec::with_capacity(PREFIX + id.len() + command.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(command);
        TimerRecord(bytes.into_boxed_slice())
    }

    fn id_len(&self) -> usize {
        u16::from_le_bytes([self.0[0], self.0[1]]) as usize
    }

    pub fn id(&self) -> &[u8] {
        &self.0[PREFIX..PREFIX + self.id_len()]
    }

    /// The schedule command's JSON (the input record's value).
    pub fn command(&self) -> &[u8] {
        &self.0[PREFIX + self.id_len()..]
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

// The id alone is the record's identity, so the wheel's index can look a
// timer up by its id bytes (`Borrow<[u8]>` needs Hash and Eq to agree with
// those of `[u8]`).
impl Hash for TimerRecord {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state)
    }
}

impl PartialEq for TimerRecord {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for TimerRecord {}

impl Borrow<[u8]> for TimerRecord {
    fn borrow(&self) -> &[u8] {
        self.id()
    }
}

impl std::fmt::Debug for TimerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerRecord")
            .field("id", &String::from_utf8_lossy(self.id()))
            .field("command_bytes", &self.command().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn id_and_command_come_back_and_identity_is_the_id() {
        let r = TimerRecord::new(b"invoice-981", br#"{"op":"schedule"}"#);
        assert_eq!(r.id(), b"invoice-981");
        assert_eq!(r.command(), br#"{"op":"schedule"}"#);
        assert_eq!(r.heap_bytes(), 2 + 11 + 17);
        let other = TimerRecord::new(b"invoice-981", b"{}");
        assert_eq!(r, other);
        let id: &[u8] = b"invoice-981";
        assert_eq!(hash_of(&r), hash_of(id), "Borrow<[u8]> agrees with Hash");
        let empty = TimerRecord::new(b"", b"");
        assert_eq!((empty.id(), empty.command()), (&b""[..], &b""[..]));
    }
}
