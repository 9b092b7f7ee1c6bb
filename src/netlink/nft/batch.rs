//! Deletes as nfnetlink batches: each op encoded, a batch sent in one send(), failing ops
//! settled and the rest sent again, or (atomic) all applied or none.

use std::time::Instant;

use rustix::io::Errno;

use super::wire::*;
use crate::model::Op;
use crate::netlink::{Fault, NLM_F_REQUEST, Socket, Writer, messages, seq_offset};

/// Ops per batch: about 70 KB of messages, well inside the (grown) send buffer; the errors
/// of a failing batch fit the (grown) receive buffer, and a lost one is caught by the
/// caller's verification dump anyway.
const BATCH_OPS: usize = 1000;

/// On DELCHAIN/DELTABLE: fail with EBUSY instead of deleting what the object contains.
const NLM_F_NONREC: u16 = 0x100;

impl Op {
    fn encode(&self, w: &mut Writer, seq: u32) {
        match self {
            Op::Rule {
                family,
                table,
                chain,
                handle,
            } => {
                w.begin(msg_type(NFT_MSG_DELRULE), NLM_F_REQUEST, seq);
                nfgenmsg(w, *family, 0);
                w.attr_str(NFTA_RULE_TABLE, table);
                w.attr_str(NFTA_RULE_CHAIN, chain);
                w.attr(NFTA_RULE_HANDLE, &handle.to_be_bytes());
            }
            Op::Chain { family, table, name } => {
                w.begin(msg_type(NFT_MSG_DELCHAIN), NLM_F_REQUEST | NLM_F_NONREC, seq);
                nfgenmsg(w, *family, 0);
                w.attr_str(NFTA_CHAIN_TABLE, table);
                w.attr_str(NFTA_CHAIN_NAME, name);
            }
            Op::Table {
                family,
                name,
                recursive,
            } => {
                let nonrec = if *recursive { 0 } else { NLM_F_NONREC };
                w.begin(msg_type(NFT_MSG_DELTABLE), NLM_F_REQUEST | nonrec, seq);
                nfgenmsg(w, *family, 0);
                w.attr_str(NFTA_TABLE_NAME, name);
            }
            Op::Elem {
                family,
                table,
                set,
                key,
            } => {
                // LIST_ELEMENTS { LIST_ELEM { ELEM_KEY { DATA_VALUE key } } }
                w.begin(msg_type(NFT_MSG_DELSETELEM), NLM_F_REQUEST, seq);
                nfgenmsg(w, *family, 0);
                w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                let value = Writer::nested(NFTA_DATA_VALUE, key);
                let elem_key = Writer::nested(NFTA_SET_ELEM_KEY | NLA_F_NESTED, &value);
                let elem = Writer::nested(NFTA_LIST_ELEM | NLA_F_NESTED, &elem_key);
                w.attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &elem);
            }
            Op::Set { family, table, name } => {
                w.begin(msg_type(NFT_MSG_DELSET), NLM_F_REQUEST | NLM_F_NONREC, seq);
                nfgenmsg(w, *family, 0);
                w.attr_str(NFTA_SET_TABLE, table);
                w.attr_str(NFTA_SET_NAME, name);
            }
        }
        w.end();
    }
}

/// Deletes `ops`, returning one result per op: the kernel's answer (ENOENT: already gone,
/// which the caller decides with `error::is_gone`).
/// Ops in a batch that another op aborted are sent again; the caller still verifies with
/// a fresh dump, because a result can only say what the kernel told us.
pub fn delete(sock: &mut Socket, ops: &[Op], deadline: Instant) -> Vec<Result<(), Fault>> {
    sock.grow_buffers(4 << 20);
    let mut results: Vec<Option<Result<(), Fault>>> = vec![None; ops.len()];
    // Each round settles every op that failed in it, so few rounds are ever needed.
    for _round in 0..5 {
        let todo: Vec<usize> = (0..ops.len()).filter(|&i| results[i].is_none()).collect();
        if todo.is_empty() || Instant::now() >= deadline {
            break;
        }
        for chunk in todo.chunks(BATCH_OPS) {
            for (i, r) in chunk.iter().zip(send_batch(sock, ops, chunk)) {
                if let Some(r) = r {
                    results[*i] = Some(r);
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(Errno::TIMEDOUT.into())))
        .collect()
}

/// Deletes `ops` in one batch or not at all: the first error, if any, is returned and
/// the kernel has applied nothing.
pub fn delete_atomic(sock: &mut Socket, ops: &[Op]) -> Result<(), Fault> {
    if ops.is_empty() {
        return Ok(());
    }
    if ops.len() > BATCH_OPS {
        return Err(Fault::Encode);
    }
    sock.grow_buffers(4 << 20);
    let chunk: Vec<usize> = (0..ops.len()).collect();
    let results = send_batch(sock, ops, &chunk);
    // An op left unsettled (None) was rolled back by another op's failure.
    for r in &results {
        if let Some(Err(e)) = r {
            return Err(*e);
        }
    }
    if results.iter().any(Option::is_none) {
        return Err(Errno::CANCELED.into());
    }
    Ok(())
}

/// One batch. Per op: Some(final result), or None when the batch was aborted by another
/// op and this one should be sent again.
fn send_batch(sock: &mut Socket, ops: &[Op], chunk: &[usize]) -> Vec<Option<Result<(), Fault>>> {
    let n = chunk.len();
    let begin_seq = sock.reserve_seqs(seq_offset(n).saturating_add(2));
    let mut w = Writer::default();
    w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq);
    nfgenmsg(&mut w, 0, NFNL_SUBSYS_NFTABLES);
    w.end();
    for (k, &i) in chunk.iter().enumerate() {
        ops[i].encode(&mut w, begin_seq.wrapping_add(1).wrapping_add(seq_offset(k)));
    }
    w.begin(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        begin_seq.wrapping_add(seq_offset(n)).wrapping_add(1),
    );
    nfgenmsg(&mut w, 0, NFNL_SUBSYS_NFTABLES);
    w.end();
    if let Err(e) = w.buf().and_then(|b| Ok(sock.send(b)?)) {
        return vec![Some(Err(e)); n];
    }
    // Ops ask for no ACK: the kernel runs the whole batch inside send(), so when send
    // returns, the error of every op that failed (and nothing else) is already queued.
    let mut errors: Vec<Option<i32>> = vec![None; n];
    let mut batch_err = None;
    let mut lost = false;
    let received = sock.with_buf(|sock, buf| {
        loop {
            let data = match sock.recv_queued(buf) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(()),
                Err(Errno::NOBUFS) => {
                    lost = true; // Errors were dropped; the caller's verification dump decides.
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            for m in messages(data).flatten() {
                let Some(code) = m.error_code().filter(|&c| c != 0) else {
                    continue;
                };
                if m.seq == begin_seq {
                    batch_err = Some(code);
                    continue;
                }
                let k = m.seq.wrapping_sub(begin_seq).wrapping_sub(1) as usize;
                if let Some(slot) = errors.get_mut(k) {
                    *slot = Some(code);
                }
            }
        }
    });
    if let Err(e) = received {
        return vec![Some(Err(e.into())); n];
    }
    if let Some(e) = batch_err {
        return vec![Some(Err(Errno::from_raw_os_error(e).into())); n];
    }
    let aborted = !lost && errors.iter().any(Option::is_some);
    errors
        .into_iter()
        .map(|c| match c {
            Some(e) => Some(Err(Errno::from_raw_os_error(e).into())),
            // Rolled back with the rest of an aborted batch: to be sent again.
            None if aborted => None,
            None => Some(Ok(())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;
    use crate::model::{Elem, ElemMeaning, NFPROTO_INET, Rule};
    use crate::netlink::{attrs, messages};

    /// SmolVM 0.0.36's maps and sets, made with the nft CLI as SmolVM makes them.
    #[test]
    fn real_elements_are_dumped_and_deleted_by_their_own_key_bytes() {
        if !crate::netlink::test_netns() {
            return;
        }
        crate::netlink::test_sh(
            "nft 'add table ip smolvm_nat
             add map ip smolvm_nat dnat_ext { type inet_service : ipv4_addr . inet_service; }
             add element ip smolvm_nat dnat_ext { 2200 : 172.16.0.2 . 22, 2201 : 172.16.0.3 . 22 }
             add table inet smolvm_filter
             add set inet smolvm_filter fwd_allow { type ipv4_addr . inet_service; }
             add element inet smolvm_filter fwd_allow { 172.16.0.2 . 22 }
             add set inet smolvm_filter allowed_taps { type ifname; }
             add element inet smolvm_filter allowed_taps { \"tap2\", \"tap3\" }'",
        );
        let Some(mut sock) = crate::netlink::test_socket(Socket::netfilter(deadline())) else {
            return;
        };
        let now = dump_shared(&mut sock).unwrap();
        assert_eq!(now.sets.len(), 3);
        let meanings: Vec<ElemMeaning> = now.elems.iter().map(Elem::meaning).collect();
        assert!(meanings.contains(&ElemMeaning::Forward {
            port: 2200,
            ip: [172, 16, 0, 2],
            guest_port: 22
        }));
        assert!(meanings.contains(&ElemMeaning::Guest {
            ip: [172, 16, 0, 2],
            port: 22
        }));
        assert!(meanings.contains(&ElemMeaning::Tap("tap3".into())));
        assert_eq!(now.elems.len(), 5);
        // Delete vm 172.16.0.2's three elements, one of them twice (already gone).
        let mine: Vec<Op> = now
            .elems
            .iter()
            .filter(|e| match e.meaning() {
                ElemMeaning::Forward { ip, .. } | ElemMeaning::Guest { ip, .. } => ip == [172, 16, 0, 2],
                ElemMeaning::Tap(t) => t == "tap2",
                ElemMeaning::Other => false,
            })
            .map(Op::for_elem)
            .collect();
        assert_eq!(mine.len(), 3);
        let mut ops = mine.clone();
        ops.push(mine[0].clone());
        let r = delete(&mut sock, &ops, deadline());
        assert_eq!(r[..3], [Ok(()), Ok(()), Ok(())]);
        assert_eq!(r[3], Err(Fault::Kernel(Errno::NOENT)));
        let left: Vec<ElemMeaning> = dump_shared(&mut sock)
            .unwrap()
            .elems
            .iter()
            .map(Elem::meaning)
            .collect();
        assert_eq!(
            left,
            [
                ElemMeaning::Forward {
                    port: 2201,
                    ip: [172, 16, 0, 3],
                    guest_port: 22
                },
                ElemMeaning::Tap("tap3".into())
            ]
        );
        // A set is deleted only when empty.
        let set = |name: &str| Op::Set {
            family: NFPROTO_INET,
            table: "smolvm_filter".into(),
            name: name.into(),
        };
        assert_eq!(
            delete_atomic(&mut sock, &[set("allowed_taps")]),
            Err(Fault::Kernel(Errno::BUSY))
        );
        assert_eq!(delete_atomic(&mut sock, &[set("fwd_allow")]), Ok(()));
    }

    #[test]
    fn real_batch_goes_around_a_rule_already_gone() {
        let Some(mut sock) = setup() else { return };
        let rules = rules_of(&mut sock);
        assert_eq!(rules.len(), 3);
        let mut ops: Vec<Op> = vec![Op::for_rule(&rules[0]), Op::for_rule(&rules[2])];
        // A rule that no longer exists aborts the kernel's batch; the others go anyway.
        let gone = Rule {
            handle: 999,
            ..rules[1].clone()
        };
        ops.insert(1, Op::for_rule(&gone));
        assert_eq!(
            delete(&mut sock, &ops, deadline()),
            vec![Ok(()), Err(Fault::Kernel(Errno::NOENT)), Ok(())]
        );
        let left: Vec<Option<String>> = rules_of(&mut sock).into_iter().map(|r| r.comment).collect();
        assert_eq!(left, [Some("r2".to_string())]);
        // What is gone comes back as ENOENT, which `error::is_gone` calls done.
        assert_eq!(
            delete(&mut sock, &ops[..1], deadline()),
            vec![Err(Fault::Kernel(Errno::NOENT))]
        );
    }

    #[test]
    fn real_atomic_batch_applies_nothing_when_one_op_fails() {
        let Some(mut sock) = setup() else { return };
        let rules = rules_of(&mut sock);
        let ops = [
            Op::for_rule(&rules[0]),
            Op::Table {
                family: NFPROTO_INET,
                name: "t".into(),
                recursive: false,
            },
        ];
        assert_eq!(delete_atomic(&mut sock, &ops), Err(Fault::Kernel(Errno::BUSY)));
        assert_eq!(rules_of(&mut sock).len(), 3, "the rule delete was rolled back");
        let chains = dump_chains(&mut sock, NFPROTO_INET, "t").unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(dump_tables(&mut sock).unwrap().len(), 1);
    }

    #[test]
    fn delrule_always_carries_the_handle() {
        let mut w = Writer::default();
        let op = Op::Rule {
            family: NFPROTO_INET,
            table: "smolvm_filter".into(),
            chain: "forward".into(),
            handle: 0x0102,
        };
        op.encode(&mut w, 5);
        let m = messages(w.buf().unwrap()).next().unwrap().unwrap();
        assert_eq!(m.ty, 0x0a08);
        assert_eq!(&m.payload[..4], &[NFPROTO_INET, 0, 0, 0]);
        let a: Vec<(u16, &[u8])> = attrs(&m.payload[4..]).collect();
        assert_eq!(a[0], (NFTA_RULE_TABLE, &b"smolvm_filter\0"[..]));
        assert_eq!(a[1], (NFTA_RULE_CHAIN, &b"forward\0"[..]));
        assert_eq!(a[2], (NFTA_RULE_HANDLE, &[0, 0, 0, 0, 0, 0, 1, 2][..]));
    }
}
