//! Decoding what a rule dump carries: the comment in its userdata TLV and the IPv4
//! addresses its expressions compare with or load.

use super::wire::*;
use crate::model::Rule;
use crate::netlink::{attr_str, attrs};

pub(super) fn decode_rule(payload: &[u8]) -> Option<Rule> {
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::model::NFPROTO_IPV4;
    use crate::netlink::{Writer, messages};

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
