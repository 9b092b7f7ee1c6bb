//! The nf_tables wire format we speak: nfnetlink message types, the NFTA_* attributes
//! read and written, and the nfgenmsg header.

use crate::netlink::Writer;

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;

pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;

pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NFT_MSG_NEWTABLE: u16 = 0;

pub(super) const NFT_MSG_GETTABLE: u16 = 1;

pub(super) const NFT_MSG_DELTABLE: u16 = 2;

pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;

pub(super) const NFT_MSG_GETCHAIN: u16 = 4;

pub(super) const NFT_MSG_DELCHAIN: u16 = 5;

pub(super) const NFT_MSG_NEWRULE: u16 = 6;

pub(super) const NFT_MSG_GETRULE: u16 = 7;

pub(super) const NFT_MSG_DELRULE: u16 = 8;

pub(super) const NFT_MSG_NEWSET: u16 = 9;

pub(super) const NFT_MSG_GETSET: u16 = 10;

pub(super) const NFT_MSG_DELSET: u16 = 11;

pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;

pub(super) const NFT_MSG_GETSETELEM: u16 = 13;

pub(super) const NFT_MSG_DELSETELEM: u16 = 14;

pub(super) const NFTA_TABLE_NAME: u16 = 1;

pub(super) const NFTA_CHAIN_TABLE: u16 = 1;

pub(super) const NFTA_CHAIN_NAME: u16 = 3;

pub(super) const NFTA_RULE_TABLE: u16 = 1;

pub(super) const NFTA_RULE_CHAIN: u16 = 2;

/// u64 big-endian. A DELRULE without it flushes the whole chain: always sent.
pub(super) const NFTA_RULE_HANDLE: u16 = 3;

pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;

pub(super) const NFTA_RULE_USERDATA: u16 = 7;

pub(super) const NFTA_LIST_ELEM: u16 = 1;

pub(super) const NFTA_SET_TABLE: u16 = 1;

pub(super) const NFTA_SET_NAME: u16 = 2;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;

pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;

pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;

pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;

/// Set on every attribute that holds attributes, as libnftnl does.
pub(super) const NLA_F_NESTED: u16 = 0x8000;

pub(super) const NFTA_EXPR_NAME: u16 = 1;

pub(super) const NFTA_EXPR_DATA: u16 = 2;

pub(super) const NFTA_CMP_DATA: u16 = 3;

pub(super) const NFTA_IMMEDIATE_DATA: u16 = 2;

pub(super) const NFTA_DATA_VALUE: u16 = 1;

/// libnftnl's udata TLV type for a rule comment (the value keeps its trailing NUL).
pub(super) const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

pub(super) fn msg_type(op: u16) -> u16 {
    NFNL_SUBSYS_NFTABLES << 8 | op
}

pub(super) fn nfgenmsg(w: &mut Writer, family: u8, res_id: u16) {
    w.bytes(&[family, 0]);
    w.bytes(&res_id.to_be_bytes());
}
