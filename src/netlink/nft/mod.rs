//! nf_tables over raw nfnetlink: dump tables and rules (with their comments), and delete
//! chosen rules/tables by handle in transactional batches. Hand-rolled because neli has
//! no nf_tables support and a batch must leave in a single send().
//!
//! ```text
//! nlmsghdr.type = NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_*
//! struct nfgenmsg { u8 family; u8 version (0); be16 res_id; }   then NFTA_* attributes
//! batch: BATCH_BEGIN(res_id = 10) · op · op · … · BATCH_END — all applied or none
//! ```
//!
//! A batch is atomic: one failing op (ENOENT for an already deleted rule) rolls back every
//! other op of the batch. So failing ops are settled and the rest is sent again. Ops ask
//! for no ACK: only failures answer, and they are queued by the time send() returns.
//! EPERM comes once, on the BATCH_BEGIN sequence number.
//!
//! Rooms: `wire` (message types and attributes), `dump` (the objects as the kernel lists
//! them), `decode` (a rule's comment and addresses), `batch` (deletes).

mod batch;
mod decode;
mod dump;
mod wire;

pub use batch::*;
pub use dump::*;

#[cfg(test)]
mod testing {
    use std::time::Instant;

    use super::*;
    use crate::model::{NFPROTO_INET, Rule};
    use crate::netlink::Socket;

    pub fn deadline() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    pub fn rules_of(sock: &mut Socket) -> Vec<Rule> {
        dump_rules(sock, NFPROTO_INET, "t", "c").unwrap()
    }

    pub fn setup() -> Option<Socket> {
        if !crate::netlink::test_netns() {
            return None;
        }
        crate::netlink::test_sh(
            "nft 'add table inet t; add chain inet t c; add rule inet t c accept comment \"r1\";
             add rule inet t c accept comment \"r2\"; add rule inet t c accept comment \"r3\"'",
        );
        crate::netlink::test_socket(Socket::netfilter(deadline()))
    }
}
