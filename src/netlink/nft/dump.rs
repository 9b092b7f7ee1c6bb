//! Dumps of SmolVM's and Celesto's nf_tables objects: tables, chains, rules, sets and
//! their elements, each as the kernel lists it, into `model`'s plain data.

use rustix::io::Errno;

use super::decode::decode_rule;
use super::wire::*;
use crate::model::{Chain, Elem, NftState, Project, Rule, Set, Table};
use crate::netlink::{Fault, NLM_F_DUMP, NLM_F_REQUEST, Socket, Writer, attr_str, attrs};

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

/// The ruleset as cleanup needs it: every table, and the chains, rules, sets and set
/// elements of SmolVM's and Celesto's shared tables, from one socket.
pub fn dump_shared(sock: &mut Socket) -> Result<NftState, Fault> {
    let tables = dump_tables(sock)?;
    let mut state = NftState::default();
    for t in tables
        .iter()
        .filter(|t| Project::of_shared_table(t.family, &t.name).is_some())
    {
        // Rules chain by chain: the kernel resumes a rule dump by counting from the start
        // of what it covers, so one dump of a table walks all of its rules again for every
        // 32 KB of replies (quadratic in the table's rules), one of a chain only that chain.
        let chains = dump_chains(sock, t.family, &t.name)?;
        for c in &chains {
            state.rules.extend(dump_rules(sock, t.family, &t.name, &c.name)?);
        }
        state.chains.extend(chains);
        for set in dump_sets(sock, t.family, &t.name)? {
            state.elems.extend(dump_elems(sock, &set)?);
            state.sets.push(set);
        }
    }
    state.tables = tables;
    Ok(state)
}

/// Every rule of one chain of a table. A table or chain that does not exist has no rules.
pub fn dump_rules(sock: &mut Socket, family: u8, table: &str, chain: &str) -> Result<Vec<Rule>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    w.begin(msg_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, seq);
    nfgenmsg(&mut w, family, 0);
    w.attr_str(NFTA_RULE_TABLE, table);
    w.attr_str(NFTA_RULE_CHAIN, chain);
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
