//! What both regimes do alike when a session goes away: the regime takes the session's work
//! back (`session_lost`), and the closes every part can call (a fatal error, an identity the log
//! has refused, an identity found wrong) go through it, so no part needs the other regime or
//! `Core`.

use tessera_protocol::log::{CheckOutcome, LogEvent};
use tessera_protocol::{PublicKey, Reason};

use super::context::Context;
use super::session::Session;
use super::ConnId;

/// A regime's state as a part of the core.
pub(super) trait Part {
    /// The open round or step.
    fn number(&self) -> u64;

    /// Whether the open round or step has work out or in (an administrator's stop lets it
    /// finish; without any, the run stops at once).
    fn in_progress(&self) -> bool;

    /// A session is gone (closed, left, silent or replaced): its work goes back to the queue.
    fn session_lost(&mut self, cx: &mut Context, s: Session);

    /// Tells the peer why, closes the connection and forgets the session.
    fn fatal(&mut self, cx: &mut Context, conn: ConnId, why: Reason) {
        if let Some(s) = cx.close(conn, why) {
            self.session_lost(cx, s);
        }
    }

    /// Forgets a session without telling the peer (it disconnected, left or was replaced).
    fn drop_session(&mut self, cx: &mut Context, conn: ConnId, why: Option<Reason>) {
        if let Some(s) = cx.forget(conn, why) {
            self.session_lost(cx, s);
        }
    }

    /// Closes the sessions of an identity the log has just refused.
    fn close_refused(&mut self, cx: &mut Context, key: PublicKey, why: Reason) {
        for conn in cx.conns_of(key) {
            self.fatal(cx, conn, why.clone());
        }
    }

    /// An identity found wrong outside a lease's check (NaN or infinities, a copied or
    /// failing whole-model update): a failed check goes into the log, which takes its credits
    /// and refuses it (a restarted coordinator too), then its sessions close.
    fn found_wrong(&mut self, cx: &mut Context, key: PublicKey, why: Reason) {
        let step = self.number();
        cx.log(LogEvent::Checked {
            key,
            step,
            auditors: Vec::new(),
            outcome: CheckOutcome::Failed(why.clone()),
            flops: 0.0,
            credited: Vec::new(),
        });
        self.close_refused(cx, key, why);
    }
}
