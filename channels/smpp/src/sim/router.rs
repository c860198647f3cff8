//! Where receipts go: the bound receiver/transceiver sessions of each system_id, and the
//! receipts held for a system_id until one of its receiving sessions binds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::mpsc::UnboundedSender;

use super::receipt::Receipt;

/// Receipts held per system_id while none of its sessions can receive; the oldest go first.
const MAX_HELD: usize = 100_000;

#[derive(Default)]
struct Entry {
    sessions: Vec<(u64, UnboundedSender<Receipt>)>,
    held: VecDeque<Receipt>,
}

/// Shared by all sessions of one SMSC.
#[derive(Default)]
pub(crate) struct Router {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Router {
    /// Registers a session that can receive deliver_sm and hands it the held receipts.
    pub(crate) fn register(
        &self,
        system_id: &str,
        conn: u64,
        tx: UnboundedSender<Receipt>,
    ) -> VecDeque<Receipt> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(system_id.to_owned()).or_default();
        entry.sessions.push((conn, tx));
        std::mem::take(&mut entry.held)
    }

    /// Removes a session (unbind or disconnect).
    pub(crate) fn unregister(&self, system_id: &str, conn: u64) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(system_id) {
            entry.sessions.retain(|(c, _)| *c != conn);
            if entry.sessions.is_empty() && entry.held.is_empty() {
                map.remove(system_id);
            }
        }
    }

    /// Sends a receipt to a receiving session of `system_id`, or holds it for the next one.
    pub(crate) fn route(&self, system_id: &str, receipt: Receipt) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(system_id.to_owned()).or_default();
        let mut receipt = receipt;
        while let Some((_, tx)) = entry.sessions.first() {
            match tx.send(receipt) {
                Ok(()) => return,
                Err(e) => {
                    receipt = e.0;
                    entry.sessions.remove(0);
                }
            }
        }
        if entry.held.len() >= MAX_HELD {
            entry.held.pop_front();
        }
        entry.held.push_back(receipt);
    }

    /// Number of receipts held for `system_id`.
    #[cfg(test)]
    pub(crate) fn held(&self, system_id: &str) -> usize {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(system_id).map_or(0, |e| e.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::receipt::{Addr, ReceiptKind, Snippet};

    fn receipt(id: u64) -> Receipt {
        Receipt {
            id,
            kind: ReceiptKind::Delivered,
            source: Addr::new(0, 0, "a"),
            dest: Addr::new(0, 0, "b"),
            submit_secs: 0,
            snippet: Snippet::default(),
            attempts: 0,
        }
    }

    #[test]
    fn holds_until_a_receiver_binds_and_skips_closed_sessions() {
        let router = Router::default();
        router.route("esme", receipt(1));
        assert_eq!(router.held("esme"), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let held = router.register("esme", 1, tx);
        assert_eq!(held.len(), 1);
        router.route("esme", receipt(2));
        assert_eq!(rx.try_recv().unwrap().id, 2);
        drop(rx);
        router.route("esme", receipt(3));
        assert_eq!(router.held("esme"), 1, "a closed session is skipped");
        router.route("other", receipt(4));
        assert_eq!(router.held("esme"), 1);
        assert_eq!(router.held("other"), 1);
    }
}
