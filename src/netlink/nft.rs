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

use std::time::Instant;

use rustix::io::Errno;

use super::{Fault, NLM_F_DUMP, NLM_F_REQUEST, Socket, Writer, attr_str, attrs, messages, seq_offset};
use crate::model::{Chain, Elem, NftState, Op, Project, Rule, Set, Table};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
/// u64 big-endian. A DELRULE without it flushes the whole chain: always sent.
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
/// Set on every attribute that holds attributes, as libnftnl does.
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// libnftnl's udata TLV type for a rule comment (the value keeps its trailing NUL).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// Ops per batch: about 70 KB of messages, well inside the (grown) send buffer; the errors
/// of a failing batch fit the (grown) receive buffer, and a lost one is caught by the
/// caller's verification dump anyway.
const BATCH_OPS: usize = 1000;
/// On DELCHAIN/DELTABLE: fail with EBUSY instead of deleting what the object contains.
const NLM_F_NONREC: u16 = 0x100;

fn msg_type(op: u16) -> u16 {
    NFNL_SUBSYS_NFTABLES << 8 | op
}

fn nfgenmsg(w: &mut Writer, family: u8, res_id: u16) {
    w.bytes(&[family, 0]);
    w.bytes(&res_id.to_be_bytes());
}

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

/// Every set and map of one table. A table that does not exist has none.
pub fn dump_sets(sock: &mut Socket, family: u8, table: &str) -> Result<Vec<Set>, Fault> {
    let kind = Named {
        get: NFT_MSG_GETSET,
        new: NFT_MSG_NEWSET,
        table_attr: NFTA_SET_TABLE,
        name_attr: NFTA_SET_NAME,
        // The kernel filters a set dump by table when asked.
        filter_in_request: true,
    };
    Ok(dump_named(sock, family, table, &kind)?
        .into_iter()
        .map(|(family, name)| Set {
            family,
            table: table.to_string(),
            name,
        })
        .collect())
}

/// One kind of nf_tables object that lives in a table under a name (chains, sets).
struct Named {
    get: u16,
    new: u16,
    table_attr: u16,
    name_attr: u16,
    /// Send the table in the dump request (sets); otherwise filter the replies only.
    filter_in_request: bool,
}

/// The (family, name) of every object of `kind` in one table. A table that does not
/// exist has none.
fn dump_named(sock: &mut Socket, family: u8, table: &str, kind: &Named) -> Result<Vec<(u8, String)>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    w.begin(msg_type(kind.get), NLM_F_REQUEST | NLM_F_DUMP, seq);
    nfgenmsg(&mut w, family, 0);
    if kind.filter_in_request {
        w.attr_str(kind.table_attr, table);
    }
    w.end();
    let mut out = Vec::new();
    let result = sock.dump(w.buf()?, seq, |m| {
        if m.ty != msg_type(kind.new) || m.payload.len() < 4 {
            return;
        }
        let (mut in_table, mut name) = (String::new(), String::new());
        for (t, p) in attrs(&m.payload[4..]) {
            if t == kind.table_attr {
                in_table = attr_str(p);
            } else if t == kind.name_attr {
                name = attr_str(p);
            }
        }
        if in_table == table {
            out.push((m.payload[0], name));
        }
    });
    match result {
        Ok(()) | Err(Errno::NOENT) => Ok(out),
        Err(e) => Err(e.into()),
    }
}

/// Every element of one set, with its key and value bytes as the kernel has them.
pub fn dump_elems(sock: &mut Socket, set: &Set) -> Result<Vec<Elem>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    w.begin(msg_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, seq);
    nfgenmsg(&mut w, set.family, 0);
    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, &set.table);
    w.attr_str(NFTA_SET_ELEM_LIST_SET, &set.name);
    w.end();
    let mut out = Vec::new();
    let result = sock.dump(w.buf()?, seq, |m| {
        if m.ty != msg_type(NFT_MSG_NEWSETELEM) || m.payload.len() < 4 {
            return;
        }
        let list = attrs(&m.payload[4..]).filter(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS);
        for (_, elems) in list {
            for (_, elem) in attrs(elems).filter(|(t, _)| *t == NFTA_LIST_ELEM) {
                let value = |ty: u16| {
                    attrs(elem)
                        .find(|(t, _)| *t == ty)
                        .and_then(|(_, v)| attrs(v).find(|(t, _)| *t == NFTA_DATA_VALUE))
                        .map(|(_, b)| b.to_vec())
                };
                if let Some(key) = value(NFTA_SET_ELEM_KEY) {
                    out.push(Elem {
                        family: set.family,
                        table: set.table.clone(),
                        set: set.name.clone(),
                        key,
                        data: value(NFTA_SET_ELEM_DATA),
                    });
                }
            }
        }
    });
    match result {
        Ok(()) | Err(Errno::NOENT) => Ok(out),
        Err(e) => Err(e.into()),
    }
}

/// Every table (all families).
pub fn dump_tables(sock: &mut Socket) -> Result<Vec<Table>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    w.begin(msg_type(NFT_MSG_GETTABLE), NLM_F_REQUEST | NLM_F_DUMP, seq);
    nfgenmsg(&mut w, 0, 0);
    w.end();
    let mut out = Vec::new();
    sock.dump(w.buf()?, seq, |m| {
        if m.ty != msg_type(NFT_MSG_NEWTABLE) || m.payload.len() < 4 {
            return;
        }
        if let Some((_, name)) = attrs(&m.payload[4..]).find(|(t, _)| *t == NFTA_TABLE_NAME) {
            out.push(Table {
                family: m.payload[0],
                name: attr_str(name),
            });
        }
    })?;
    Ok(out)
}

/// Every chain of one table. A table that does not exist has no chains.
pub fn dump_chains(sock: &mut Socket, family: u8, table: &str) -> Result<Vec<Chain>, Fault> {
    let kind = Named {
        get: NFT_MSG_GETCHAIN,
        new: NFT_MSG_NEWCHAIN,
        table_attr: NFTA_CHAIN_TABLE,
        name_attr: NFTA_CHAIN_NAME,
        filter_in_request: false,
    };
    Ok(dump_named(sock, family, table, &kind)?
        .into_iter()
        .map(|(family, name)| Chain {
            family,
            table: table.to_string(),
            name,
        })
        .collect())
}

/// The ruleset as cleanup needs it: every table, and the chains (when asked), rules, sets
/// and set elements of SmolVM's and Celesto's shared tables, from one socket.
pub fn dump_shared(sock: &mut Socket, with_chains: bool) -> Result<NftState, Fault> {
    let tables = dump_tables(sock)?;
    let mut state = NftState::default();
    for t in tables
        .iter()
        .filter(|t| Project::of_shared_table(t.family, &t.name).is_some())
    {
        if with_chains {
            state.chains.extend(dump_chains(sock, t.family, &t.name)?);
        }
        state.rules.extend(dump_rules(sock, t.family, &t.name)?);
        for set in dump_sets(sock, t.family, &t.name)? {
            state.elems.extend(dump_elems(sock, &set)?);
            state.sets.push(set);
        }
    }
    state.tables = tables;
    Ok(state)
}

/// Every rule of one table. A table that does not exist has no rules.
pub fn dump_rules(sock: &mut Socket, family: u8, table: &str) -> Result<Vec<Rule>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    w.begin(msg_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, seq);
    nfgenmsg(&mut w, family, 0);
    w.attr_str(NFTA_RULE_TABLE, table);
    w.end();
    let mut out = Vec::new();
    match sock.dump(w.buf()?, seq, |m| {
        if m.ty == msg_type(NFT_MSG_NEWRULE)
            && let Some(r) = decode_rule(m.payload)
        {
            out.push(r);
        }
    }) {
        Ok(()) => Ok(out),
        Err(Errno::NOENT) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn decode_rule(payload: &[u8]) -> Option<Rule> {
    let family = *payload.first()?;
    let mut rule = Rule {
        family,
        table: String::new(),
        chain: String::new(),
        handle: 0,
        comment: None,
        ipv4: Vec::new(),
    };
    for (ty, p) in attrs(payload.get(4..)?) {
        match ty {
            NFTA_RULE_TABLE => rule.table = attr_str(p),
            NFTA_RULE_CHAIN => rule.chain = attr_str(p),
            NFTA_RULE_HANDLE => rule.handle = u64::from_be_bytes(p.get(..8)?.try_into().ok()?),
            NFTA_RULE_USERDATA => rule.comment = comment(p),
            NFTA_RULE_EXPRESSIONS => rule.ipv4 = ipv4_values(p),
            _ => {}
        }
    }
    (rule.handle != 0).then_some(rule)
}

/// 4-byte data values of the rule's `cmp` and `immediate` expressions.
///
/// ```text
/// NFTA_RULE_EXPRESSIONS → NFTA_LIST_ELEM* → { NFTA_EXPR_NAME "cmp"|"immediate",
///   NFTA_EXPR_DATA → NFTA_CMP_DATA (3) | NFTA_IMMEDIATE_DATA (2) → NFTA_DATA_VALUE (1) }
/// ```
fn ipv4_values(exprs: &[u8]) -> Vec<[u8; 4]> {
    let mut out = Vec::new();
    for (_, elem) in attrs(exprs).filter(|(t, _)| *t == NFTA_LIST_ELEM) {
        let name = attrs(elem)
            .find(|(t, _)| *t == NFTA_EXPR_NAME)
            .map(|(_, p)| attr_str(p));
        let slot = match name.as_deref() {
            Some("cmp") => NFTA_CMP_DATA,
            Some("immediate") => NFTA_IMMEDIATE_DATA,
            _ => continue,
        };
        let Some((_, data)) = attrs(elem).find(|(t, _)| *t == NFTA_EXPR_DATA) else {
            continue;
        };
        for (_, value) in attrs(data).filter(|(t, _)| *t == slot) {
            for (_, v) in attrs(value).filter(|(t, _)| *t == NFTA_DATA_VALUE) {
                if let Ok(ip) = <[u8; 4]>::try_from(v) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// The comment inside NFTA_RULE_USERDATA's `{u8 type; u8 len; value}` list.
pub fn comment(udata: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= udata.len() {
        let (ty, len) = (udata[off], udata[off + 1] as usize);
        let value = udata.get(off + 2..off + 2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            return Some(attr_str(value));
        }
        off += 2 + len;
    }
    None
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
    let mut buf = Vec::new();
    loop {
        let data = match sock.recv_queued(&mut buf) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(Errno::NOBUFS) => {
                lost = true; // Errors were dropped; the caller's verification dump decides.
                break;
            }
            Err(e) => return vec![Some(Err(e.into())); n],
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
    use super::*;
    use crate::model::{ElemMeaning, NFPROTO_INET, NFPROTO_IPV4};

    fn deadline() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    fn rules_of(sock: &mut Socket) -> Vec<Rule> {
        dump_rules(sock, NFPROTO_INET, "t").unwrap()
    }

    fn setup() -> Option<Socket> {
        if !crate::netlink::test_netns() {
            return None;
        }
        crate::netlink::test_sh(
            "nft 'add table inet t; add chain inet t c; add rule inet t c accept comment \"r1\";
             add rule inet t c accept comment \"r2\"; add rule inet t c accept comment \"r3\"'",
        );
        crate::netlink::test_socket(Socket::netfilter(deadline()))
    }

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
        let now = dump_shared(&mut sock, false).unwrap();
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
        let left: Vec<ElemMeaning> = dump_shared(&mut sock, false)
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
    fn comment_tlv() {
        let mut u = vec![NFTNL_UDATA_RULE_COMMENT, 12];
        u.extend_from_slice(b"smolvm:vm-1\0");
        assert_eq!(comment(&u).as_deref(), Some("smolvm:vm-1"));
        // Another TLV first, then the comment.
        let mut v = vec![5, 2, 0xaa, 0xbb];
        v.extend_from_slice(&u);
        assert_eq!(comment(&v).as_deref(), Some("smolvm:vm-1"));
        // A length that runs past the end is not read.
        assert_eq!(comment(&[0, 40, b'x']), None);
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

    #[test]
    fn rule_decoding() {
        let mut w = Writer::default();
        w.begin(msg_type(NFT_MSG_NEWRULE), 0, 1);
        nfgenmsg(&mut w, NFPROTO_IPV4, 0);
        w.attr_str(NFTA_RULE_TABLE, "smolvm_nat");
        w.attr_str(NFTA_RULE_CHAIN, "prerouting");
        w.attr(NFTA_RULE_HANDLE, &5u64.to_be_bytes());
        let mut u = vec![NFTNL_UDATA_RULE_COMMENT, 23];
        u.extend_from_slice(b"smolvm:vm-0a1b2c3d:ssh\0");
        w.attr(NFTA_RULE_USERDATA, &u);
        // expressions: payload (ignored), cmp 172.16.0.2, immediate of 2 bytes (a port).
        let nested = |parts: &[(u16, Vec<u8>)]| {
            let mut x = Writer::default();
            for (t, p) in parts {
                x.attr(*t, p);
            }
            x.buf
        };
        let expr = |name: &str, slot: u16, value: &[u8]| {
            let value = nested(&[(NFTA_DATA_VALUE, value.to_vec())]);
            let data = nested(&[(1, vec![0, 0, 0, 1]), (slot, value)]);
            nested(&[
                (NFTA_EXPR_NAME, format!("{name}\0").into_bytes()),
                (NFTA_EXPR_DATA, data),
            ])
        };
        let exprs = nested(&[
            (NFTA_LIST_ELEM, nested(&[(NFTA_EXPR_NAME, b"payload\0".to_vec())])),
            (NFTA_LIST_ELEM, expr("cmp", NFTA_CMP_DATA, &[172, 16, 0, 2])),
            (NFTA_LIST_ELEM, expr("immediate", NFTA_IMMEDIATE_DATA, &[0, 22])),
        ]);
        w.attr(NFTA_RULE_EXPRESSIONS, &exprs);
        w.end();
        let m = messages(w.buf().unwrap()).next().unwrap().unwrap();
        let r = decode_rule(m.payload).unwrap();
        assert_eq!(
            r,
            Rule {
                family: NFPROTO_IPV4,
                table: "smolvm_nat".into(),
                chain: "prerouting".into(),
                handle: 5,
                comment: Some("smolvm:vm-0a1b2c3d:ssh".into()),
                ipv4: vec![[172, 16, 0, 2]],
            }
        );
    }
}
