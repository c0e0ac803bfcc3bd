//! The client side of an incremental fetch session (KIP-227) with one broker, as a state
//! machine without I/O: it decides what the next Fetch names, and takes the answer in.
//!
//! The first request opens a session (id 0, epoch 0) and names every partition. Each later
//! one carries the session id and the next epoch, and names only the partitions whose fetch
//! offset differs from the one the broker's session holds (the offset last sent), plus
//! those to forget; the broker answers only for partitions with something new. Any error
//! about the session (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH), any other
//! top-level error or a failed request closes it on this side: the next request is a full
//! one that opens a new session. A broker that declines sessions answers session id 0; the
//! client then sends full requests, each asking again.
//!
//! Requests to one broker are built in the order they are sent and the broker handles them
//! in that order, so the offsets recorded here when a request is built are what the broker's
//! session holds once it has handled it — also when the caller drops a request's answer.

use std::collections::BTreeMap;
use std::rc::Rc;

/// The partitions a fetch reads: (topic, partition, fetch offset).
pub type Wanted = Vec<(Rc<str>, i32, i64)>;

pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

/// What one Fetch request says about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub session_id: i32,
    pub epoch: i32,
    /// The partitions to name: all of them in a full request, the changed ones otherwise.
    pub partitions: Wanted,
    /// Partitions the session is to drop (incremental requests only).
    pub forgotten: Vec<(Rc<str>, i32)>,
}

impl SessionRequest {
    pub fn is_full(&self) -> bool {
        self.epoch == 0
    }
}

#[derive(Debug, Default)]
pub struct FetchSession {
    /// 0: no session (the next request opens one).
    id: i32,
    /// The epoch of the next incremental request.
    next_epoch: i32,
    /// Each partition's fetch offset as the broker's session holds it.
    sent: BTreeMap<(Rc<str>, i32), i64>,
}

impl FetchSession {
    /// The session to open or go on with for a fetch of `wanted`; records what it sends.
    pub fn next_request(&mut self, wanted: &Wanted) -> SessionRequest {
        if self.id == 0 {
            self.sent =
                wanted.iter().map(|(topic, partition, offset)| ((Rc::clone(topic), *partition), *offset)).collect();
            return SessionRequest { session_id: 0, epoch: 0, partitions: wanted.clone(), forgotten: Vec::new() };
        }
        let keep: BTreeMap<(Rc<str>, i32), i64> =
            wanted.iter().map(|(topic, partition, offset)| ((Rc::clone(topic), *partition), *offset)).collect();
        let forgotten: Vec<(Rc<str>, i32)> = self.sent.keys().filter(|key| !keep.contains_key(*key)).cloned().collect();
        let partitions: Wanted = wanted
            .iter()
            .filter(|(topic, partition, offset)| self.sent.get(&(Rc::clone(topic), *partition)) != Some(offset))
            .cloned()
            .collect();
        self.sent = keep;
        let epoch = self.next_epoch;
        // Epochs run 1..=i32::MAX and wrap to 1 (0 opens a session, -1 is sessionless).
        self.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        SessionRequest { session_id: self.id, epoch, partitions, forgotten }
    }

    /// Takes in the top-level error code and session id of the answer to `request`.
    pub fn on_response(&mut self, request: &SessionRequest, error_code: i16, session_id: i32) {
        if error_code != 0 {
            self.close();
        } else if request.is_full() {
            if session_id == 0 {
                // Declined (the broker keeps no session for us): full requests from now on.
                self.close();
            } else {
                self.id = session_id;
                self.next_epoch = 1;
            }
        }
    }

    /// The request failed or its answer is unknown: the next request starts a new session.
    pub fn close(&mut self) {
        *self = Self::default();
    }

    pub fn is_open(&self) -> bool {
        self.id != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(entries: &[(&str, i32, i64)]) -> Wanted {
        entries.iter().map(|(t, p, o)| (Rc::from(*t), *p, *o)).collect()
    }

    #[test]
    fn a_session_opens_full_then_names_only_what_changed() {
        let mut session = FetchSession::default();
        let all = wanted(&[("a", 0, 5), ("a", 1, 7), ("b", 0, 0)]);
        let first = session.next_request(&all);
        assert_eq!((first.session_id, first.epoch, first.partitions.len()), (0, 0, 3));
        session.on_response(&first, 0, 42);
        assert!(session.is_open());
        // a-0 moved on; the others did not: only a-0 is named.
        let second = session.next_request(&wanted(&[("a", 0, 9), ("a", 1, 7), ("b", 0, 0)]));
        assert_eq!((second.session_id, second.epoch), (42, 1));
        assert_eq!(second.partitions, wanted(&[("a", 0, 9)]));
        assert!(second.forgotten.is_empty());
        session.on_response(&second, 0, 42);
        // b-0 is dropped, a-1 moves: named and forgotten; the epochs go on.
        let third = session.next_request(&wanted(&[("a", 0, 9), ("a", 1, 8)]));
        assert_eq!(third.epoch, 2);
        assert_eq!(third.partitions, wanted(&[("a", 1, 8)]));
        assert_eq!(third.forgotten, vec![(Rc::from("b"), 0)]);
        // Nothing changed: an empty incremental request (the broker long-polls the session).
        let fourth = session.next_request(&wanted(&[("a", 0, 9), ("a", 1, 8)]));
        assert_eq!((fourth.epoch, fourth.partitions.len(), fourth.forgotten.len()), (3, 0, 0));
    }

    #[test]
    fn session_errors_and_failures_fall_back_to_a_full_request() {
        let mut session = FetchSession::default();
        let all = wanted(&[("a", 0, 5), ("a", 1, 7)]);
        let first = session.next_request(&all);
        session.on_response(&first, 0, 42);
        let second = session.next_request(&all);
        session.on_response(&second, INVALID_FETCH_SESSION_EPOCH, 0);
        assert!(!session.is_open());
        let again = session.next_request(&all);
        assert!(again.is_full() && again.partitions == all);
        session.on_response(&again, 0, 43);
        let _lost = session.next_request(&all);
        session.close(); // the request timed out
        assert!(session.next_request(&all).is_full());
        // A broker that declines sessions: every request is full.
        let mut declined = FetchSession::default();
        let first = declined.next_request(&all);
        declined.on_response(&first, 0, 0);
        assert!(declined.next_request(&all).is_full());
    }

    #[test]
    fn epochs_wrap_to_one() {
        let mut session = FetchSession { id: 7, next_epoch: i32::MAX, sent: BTreeMap::new() };
        assert_eq!(session.next_request(&Vec::new()).epoch, i32::MAX);
        assert_eq!(session.next_request(&Vec::new()).epoch, 1);
    }
}
