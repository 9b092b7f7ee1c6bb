//! TAP devices over rtnetlink: one dump of every link, and deletion of chosen links.
//! Requests are built with neli's typed `Ifinfomsg`/`Rtattr`; replies are walked in place
//! for the few attributes needed; transport and ACK accounting are `super::Socket`'s.
//!
//! Deleting many links one `RTM_DELLINK` at a time costs an RCU grace period each (about
//! 17 ms). Moving them into a private link group and deleting the group unregisters them
//! in one batch, so that is the path taken for more than one link, with the per-link
//! delete as the fallback when the kernel refuses.

use std::io::Cursor;

use neli::ToBytes;
use neli::consts::rtnl::{Ifla, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};
use rustix::io::Errno;

use super::{
    Fault, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket, Writer, attr_str, attrs, messages, seq_offset,
};
use crate::error::is_gone;
use crate::model::Link;

/// IFLA_TUN_OWNER and IFLA_TUN_TYPE inside IFLA_INFO_DATA when the kind is "tun" (the
/// owner a u32, -1 for none; the type 1 tun, 2 tap).
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_TYPE: u16 = 3;
/// Requests per send when pipelining (errors, at most one per request, must fit the
/// receive buffer).
const PIPELINE: usize = 256;
const IFINFOMSG_LEN: usize = 16;
/// `IFLA_EXT_MASK` bit: leave the statistics out of a link dump (linux/rtnetlink.h).
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

fn encode(ty: Rtm, flags: u16, seq: u32, msg: &Ifinfomsg, w: &mut Writer) -> Result<(), Fault> {
    let mut body = Cursor::new(Vec::new());
    msg.to_bytes(&mut body).map_err(|_| Fault::Encode)?;
    w.begin(u16::from(ty), flags, seq);
    w.bytes(body.get_ref());
    w.end();
    Ok(())
}

fn ifinfomsg(index: i32, attrs: RtBuffer<Ifla, Buffer>) -> Result<Ifinfomsg, Fault> {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_index(index)
        .rtattrs(attrs)
        .build()
        .map_err(|_| Fault::Encode)
}

/// One u32 attribute, as an `ifinfomsg`'s attributes.
fn u32_attr(ty: Ifla, value: u32) -> Result<RtBuffer<Ifla, Buffer>, Fault> {
    let mut attrs = RtBuffer::new();
    attrs.push(
        RtattrBuilder::default()
            .rta_type(ty)
            .rta_payload(value)
            .build()
            .map_err(|_| Fault::Encode)?,
    );
    Ok(attrs)
}

fn group_attr(group: u32) -> Result<RtBuffer<Ifla, Buffer>, Fault> {
    u32_attr(Ifla::Group, group)
}

/// Every link in the current network namespace.
pub fn dump(sock: &mut Socket) -> Result<Vec<Link>, Fault> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    // Without the counters: summing each link's IPv6 statistics over every CPU is most of
    // what the kernel spends on a dump of thousands of TAPs, and nothing here reads them.
    let skip_stats = u32_attr(Ifla::ExtMask, RTEXT_FILTER_SKIP_STATS)?;
    encode(
        Rtm::Getlink,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &ifinfomsg(0, skip_stats)?,
        &mut w,
    )?;
    let mut links = Vec::new();
    let mut bad = None;
    sock.dump(w.buf()?, seq, |msg| {
        if msg.ty != u16::from(Rtm::Newlink) {
            return;
        }
        match decode(msg.payload) {
            Some(l) => links.push(l),
            None => bad = Some(Errno::PROTO),
        }
    })?;
    match bad {
        Some(e) if links.is_empty() => Err(e.into()),
        _ => Ok(links),
    }
}

/// Decodes an RTM_NEWLINK: the `ifinfomsg` header, then only the attributes cleanup needs,
/// walked in place (a full typed parse of every attribute of thousands of links costs
/// more than the kernel's dump itself).
///
/// ```text
/// struct ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change; }
/// ```
fn decode(payload: &[u8]) -> Option<Link> {
    let index = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        tun_type: None,
        group: 0,
        alias: None,
        carrier: false,
        tun_owner: None,
    };
    let u32_of = |p: &[u8]| p.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    for (ty, p) in attrs(payload.get(IFINFOMSG_LEN..)?) {
        match ty {
            libc::IFLA_IFNAME => link.name = attr_str(p),
            libc::IFLA_GROUP => link.group = u32_of(p).unwrap_or(0),
            libc::IFLA_IFALIAS => link.alias = Some(attr_str(p)).filter(|a| !a.is_empty()),
            libc::IFLA_CARRIER => link.carrier = p.first() == Some(&1),
            libc::IFLA_LINKINFO => {
                for (t, q) in attrs(p) {
                    match t {
                        libc::IFLA_INFO_KIND => link.kind = Some(attr_str(q)),
                        libc::IFLA_INFO_DATA => (link.tun_type, link.tun_owner) = tun_info(q),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // IFLA_INFO_DATA means something else for every kind: it is a tun type only for tun.
    if link.kind.as_deref() != Some("tun") {
        (link.tun_type, link.tun_owner) = (None, None);
    }
    (!link.name.is_empty()).then_some(link)
}

fn tun_info(info_data: &[u8]) -> (Option<u8>, Option<u32>) {
    let (mut ty, mut owner) = (None, None);
    for (t, p) in attrs(info_data) {
        match t {
            IFLA_TUN_TYPE => ty = p.first().copied(),
            IFLA_TUN_OWNER => {
                owner = p
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                    .filter(|&u| u != u32::MAX);
            }
            _ => {}
        }
    }
    (ty, owner)
}

/// Sends one request per item, `PIPELINE` per send, and returns each one's answer.
/// Only the last request of a send asks for an ACK: the kernel handles a send's messages
/// in order, so once that ACK is in, every earlier message has been handled and any of
/// them that failed has already queued its error.
fn pipelined(
    sock: &mut Socket,
    items: &[i32],
    build: impl Fn(i32) -> Result<(Rtm, Ifinfomsg), Fault>,
) -> Vec<Result<(), Fault>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PIPELINE) {
        let first = sock.reserve_seqs(seq_offset(chunk.len()));
        let mut w = Writer::default();
        let mut results: Vec<Option<Result<(), Fault>>> = vec![None; chunk.len()];
        let mut last = None;
        let encoded: Vec<(usize, Rtm, Ifinfomsg)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, &idx)| match build(idx) {
                Ok((ty, m)) => Some((i, ty, m)),
                Err(e) => {
                    results[i] = Some(Err(e));
                    None
                }
            })
            .collect();
        for (k, (i, ty, m)) in encoded.iter().enumerate() {
            let ack = if k + 1 == encoded.len() { NLM_F_ACK } else { 0 };
            match encode(
                *ty,
                NLM_F_REQUEST | ack,
                first.wrapping_add(seq_offset(*i)),
                m,
                &mut w,
            ) {
                Ok(()) => last = Some(*i),
                Err(e) => results[*i] = Some(Err(e)),
            }
        }
        let Some(last) = last else {
            out.extend(results.into_iter().map(|r| r.unwrap_or(Err(Fault::Encode))));
            continue;
        };
        if let Err(e) = w.buf().and_then(|b| Ok(sock.send(b)?)) {
            out.extend(std::iter::repeat_n(Err(e), chunk.len()));
            continue;
        }
        sock.with_buf(|sock, buf| {
            while results[last].is_none() {
                let data = match sock.recv(buf) {
                    Ok(d) => d,
                    Err(e) => {
                        // No final ACK in time: what happened is unknown; the caller re-dumps.
                        for r in results.iter_mut().filter(|r| r.is_none()) {
                            *r = Some(Err(e.into()));
                        }
                        break;
                    }
                };
                for msg in messages(data).flatten() {
                    let i = msg.seq.wrapping_sub(first) as usize;
                    if let (Some(code), Some(slot)) = (msg.error_code(), results.get_mut(i))
                        && slot.is_none()
                    {
                        *slot = Some(if code == 0 {
                            Ok(())
                        } else {
                            Err(Errno::from_raw_os_error(code).into())
                        });
                    }
                }
            }
        });
        // Handled before the final ACK and no error came back: done.
        out.extend(results.into_iter().map(|r| r.unwrap_or(Ok(()))));
    }
    out
}

/// Deletes links by index, one RTM_DELLINK each, with the kernel's answer for each
/// (ENODEV: already gone, which the caller decides with `error::is_gone`).
pub fn delete_each(sock: &mut Socket, indexes: &[i32]) -> Vec<Result<(), Fault>> {
    sock.grow_buffers(4 << 20);
    pipelined(sock, indexes, |idx| {
        Ok((Rtm::Dellink, ifinfomsg(idx, RtBuffer::new())?))
    })
}

/// A link group none of the `used` groups is (group 0 is everyone's default: never that).
pub fn free_group(used: &[u32], seed: u32) -> u32 {
    let mut g = 0x5e00_0000 | (seed & 0x00ff_ffff);
    while g == 0 || used.contains(&g) {
        g = g.wrapping_add(1);
    }
    g
}

/// Deletes the given links (indexes from a fresh dump) in one kernel batch when it can:
/// move them into an unused group, check from a new dump that the group holds exactly
/// these links, delete the group. Anything that goes wrong falls back to per-link deletes.
/// Returns one result per index; the caller confirms with a dump.
pub fn delete_many(
    sock: &mut Socket,
    used_groups: &[u32],
    indexes: &[i32],
    seed: u32,
) -> Vec<Result<(), Fault>> {
    if indexes.len() < 2 {
        return delete_each(sock, indexes);
    }
    sock.grow_buffers(4 << 20);
    let group = free_group(used_groups, seed);
    let set = pipelined(sock, indexes, |idx| {
        Ok((Rtm::Newlink, ifinfomsg(idx, group_attr(group)?)?))
    });
    // A link we could not move (EPERM, gone) is not in the group: it gets its own answer.
    let moved: Vec<i32> = indexes
        .iter()
        .zip(&set)
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    let group_ok = !moved.is_empty()
        && match dump(sock) {
            Ok(now) => {
                let mut members: Vec<i32> =
                    now.iter().filter(|l| l.group == group).map(|l| l.index).collect();
                let mut want = moved.clone();
                members.sort_unstable();
                want.sort_unstable();
                members == want
            }
            Err(_) => false,
        }
        && {
            let seq = sock.next_seq();
            let mut w = Writer::default();
            match group_attr(group)
                .and_then(|a| ifinfomsg(0, a))
                .and_then(|m| encode(Rtm::Dellink, NLM_F_REQUEST | NLM_F_ACK, seq, &m, &mut w))
            {
                Ok(()) => w.buf().and_then(|b| Ok(sock.request_ack(b, seq)?)).is_ok(),
                Err(_) => false,
            }
        };
    if group_ok {
        return set;
    }
    // The kernel refused the group path: per-link, and report each link's own answer (the
    // move's refusal, e.g. EPERM, says more than the delete's).
    let each = delete_each(sock, indexes);
    set.into_iter()
        .zip(each)
        .map(|(s, e)| match (s, e) {
            (_, Ok(())) => Ok(()),
            (Err(se), Err(_)) if !is_gone(se) => Err(se),
            (_, Err(ee)) => Err(ee),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(links: &[Link]) -> Vec<u32> {
        links.iter().map(|l| l.group).collect()
    }

    #[test]
    fn free_group_avoids_used_and_zero() {
        let used = [0, 0x5e00_0007];
        assert_eq!(free_group(&used, 7), 0x5e00_0008);
        assert_eq!(free_group(&used, 9), 0x5e00_0009);
        assert_ne!(free_group(&[], 0), 0);
    }

    /// A private network namespace holding these TAPs, a socket in it, and its first dump.
    fn netns_with_taps(taps: &[&str]) -> Option<(Socket, Vec<Link>)> {
        if !crate::netlink::test_netns() {
            return None;
        }
        for t in taps {
            crate::netlink::test_sh(&format!("ip tuntap add {t} mode tap"));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut sock = crate::netlink::test_socket(Socket::route(deadline))?;
        let links = dump(&mut sock).ok()?;
        Some((sock, links))
    }

    fn index_of(links: &[Link], name: &str) -> i32 {
        links.iter().find(|l| l.name == name).map(|l| l.index).unwrap()
    }

    #[test]
    fn real_group_delete_takes_exactly_the_given_taps() {
        let Some((mut sock, links)) = netns_with_taps(&["tap2", "tap3", "tap4"]) else {
            return;
        };
        let idx = |n: &str| index_of(&links, n);
        assert!(
            links
                .iter()
                .filter(|l| l.name.starts_with("tap"))
                .all(Link::is_tap)
        );
        let r = delete_many(&mut sock, &groups(&links), &[idx("tap2"), idx("tap4")], 1);
        assert_eq!(r, vec![Ok(()), Ok(())]);
        let names: Vec<String> = dump(&mut sock).unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["lo", "tap3"]);
        // Gone already: the kernel's ENODEV comes back as it is (the caller calls it done).
        // A single link takes the per-link path.
        assert_eq!(
            delete_many(&mut sock, &groups(&links), &[idx("tap2"), idx("tap4")], 1),
            vec![Err(Fault::Kernel(Errno::NODEV)); 2]
        );
        assert_eq!(
            delete_many(&mut sock, &groups(&links), &[idx("tap3")], 1),
            vec![Ok(())]
        );
        assert_eq!(dump(&mut sock).unwrap().len(), 1);
    }

    #[test]
    fn real_group_refused_falls_back_to_each_link_with_its_own_answer() {
        let Some((mut sock, links)) = netns_with_taps(&["tap5"]) else {
            return;
        };
        let idx = |n: &str| index_of(&links, n);
        // The loopback cannot be deleted: the kernel refuses the whole group delete, and
        // the per-link fallback still takes the TAP and reports the loopback's refusal.
        let r = delete_many(&mut sock, &groups(&links), &[idx("tap5"), idx("lo")], 3);
        assert_eq!(r, vec![Ok(()), Err(Fault::Kernel(Errno::OPNOTSUPP))]);
        let names: Vec<String> = dump(&mut sock).unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["lo"]);
    }

    #[test]
    fn newlink_decoding() {
        let nested = |parts: &[(u16, &[u8])]| {
            let mut w = Writer::default();
            for (t, p) in parts {
                w.attr(*t, p);
            }
            w.buf().unwrap().to_vec()
        };
        let data = nested(&[(1, &[0, 0, 0, 0][..]), (IFLA_TUN_TYPE, &[2])]);
        let info = nested(&[
            (libc::IFLA_INFO_KIND, b"tun\0"),
            (libc::IFLA_INFO_DATA | 0x8000, &data),
        ]);
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&7i32.to_ne_bytes());
        payload.extend(nested(&[
            (libc::IFLA_IFNAME, b"tap7\0"),
            (libc::IFLA_GROUP, &9u32.to_ne_bytes()),
            (libc::IFLA_CARRIER, &[1]),
            (libc::IFLA_LINKINFO | 0x8000, &info),
        ]));
        let l = decode(&payload).unwrap();
        assert_eq!(
            (l.index, l.name.as_str(), l.group, l.carrier),
            (7, "tap7", 9, true)
        );
        assert_eq!(
            (l.kind.as_deref(), l.tun_type, l.tun_owner),
            (Some("tun"), Some(2), Some(0))
        );
        assert!(l.is_tap());
        // Another kind's INFO_DATA attribute 3 is not a tun type.
        let bridge = nested(&[(libc::IFLA_INFO_KIND, b"bridge\0"), (libc::IFLA_INFO_DATA, &data)]);
        let mut p2 = vec![0u8; IFINFOMSG_LEN];
        p2.extend(nested(&[
            (libc::IFLA_IFNAME, b"br0\0"),
            (libc::IFLA_LINKINFO, &bridge),
        ]));
        assert_eq!(decode(&p2).unwrap().tun_type, None);
        assert_eq!(decode(&p2).unwrap().tun_owner, None);
        assert!(decode(&[0u8; 4]).is_none());
    }

    #[test]
    fn request_encoding_is_ifinfomsg() {
        let mut w = Writer::default();
        let m = ifinfomsg(42, group_attr(7).unwrap()).unwrap();
        encode(Rtm::Dellink, NLM_F_REQUEST | NLM_F_ACK, 9, &m, &mut w).unwrap();
        let msg = messages(w.buf().unwrap()).next().unwrap().unwrap();
        assert_eq!(msg.ty, libc::RTM_DELLINK);
        assert_eq!(msg.seq, 9);
        // struct ifinfomsg: family u8, pad u8, type u16, index i32, flags u32, change u32
        assert_eq!(msg.payload.len(), 16 + 8);
        assert_eq!(i32::from_ne_bytes(msg.payload[4..8].try_into().unwrap()), 42);
        let (ty, val) = super::super::attrs(&msg.payload[16..]).next().unwrap();
        assert_eq!(ty, libc::IFLA_GROUP);
        assert_eq!(val, &7u32.to_ne_bytes());
    }
}
