//! TAP devices over rtnetlink: one dump of every link, and deletion of chosen links.
//! The rtnetlink payloads (`ifinfomsg` and its `IFLA_*` attributes) are encoded and
//! decoded with neli's typed structs; transport and ACK accounting are `super::Socket`'s.
//!
//! Deleting many links one `RTM_DELLINK` at a time costs an RCU grace period each (about
//! 17 ms). Moving them into a private link group and deleting the group unregisters them
//! in one batch, so that is the path taken for more than one link, with the per-link
//! delete as the fallback when the kernel refuses.

use std::io::Cursor;

use neli::consts::rtnl::{Ifla, IflaInfo, RtAddrFamily, Rtm};
use neli::rtnl::{Ifinfomsg, IfinfomsgBuilder, RtattrBuilder};
use neli::types::{Buffer, RtBuffer};
use neli::{FromBytesWithInput, ToBytes};
use rustix::io::Errno;

use super::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket, Writer, messages};
use crate::model::Link;

/// IFLA_TUN_TYPE inside IFLA_INFO_DATA when the kind is "tun" (1 tun, 2 tap).
const IFLA_TUN_TYPE: u16 = 3;
/// Links per send when pipelining requests: their ACKs must fit the receive buffer.
const PIPELINE: usize = 256;

fn encode(ty: Rtm, flags: u16, seq: u32, msg: &Ifinfomsg, w: &mut Writer) -> Result<(), Errno> {
    let mut body = Cursor::new(Vec::new());
    msg.to_bytes(&mut body).map_err(|_| Errno::INVAL)?;
    w.begin(u16::from(ty), flags, seq);
    w.bytes(body.get_ref());
    w.end();
    Ok(())
}

fn ifinfomsg(index: i32, attrs: RtBuffer<Ifla, Buffer>) -> Result<Ifinfomsg, Errno> {
    IfinfomsgBuilder::default()
        .ifi_family(RtAddrFamily::Unspecified)
        .ifi_index(index)
        .rtattrs(attrs)
        .build()
        .map_err(|_| Errno::INVAL)
}

fn group_attr(group: u32) -> Result<RtBuffer<Ifla, Buffer>, Errno> {
    let mut attrs = RtBuffer::new();
    attrs.push(
        RtattrBuilder::default()
            .rta_type(Ifla::Group)
            .rta_payload(group)
            .build()
            .map_err(|_| Errno::INVAL)?,
    );
    Ok(attrs)
}

/// Every link in the current network namespace.
pub fn dump(sock: &mut Socket) -> Result<Vec<Link>, Errno> {
    let seq = sock.next_seq();
    let mut w = Writer::default();
    encode(
        Rtm::Getlink,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &ifinfomsg(0, RtBuffer::new())?,
        &mut w,
    )?;
    let mut links = Vec::new();
    let mut bad = None;
    sock.dump(&w.buf, seq, |msg| {
        if msg.ty != u16::from(Rtm::Newlink) {
            return;
        }
        match decode(msg.payload) {
            Some(l) => links.push(l),
            None => bad = Some(Errno::PROTO),
        }
    })?;
    match bad {
        Some(e) if links.is_empty() => Err(e),
        _ => Ok(links),
    }
}

fn decode(payload: &[u8]) -> Option<Link> {
    let info = Ifinfomsg::from_bytes_with_input(&mut Cursor::new(payload), payload.len()).ok()?;
    let h = info.rtattrs().get_attr_handle();
    let name = h.get_attr_payload_as_with_len::<String>(Ifla::Ifname).ok()?;
    let mut kind = None;
    let mut tun_type = None;
    if let Some(li) = h.get_attribute(Ifla::Linkinfo)
        && let Ok(lih) = li.get_attr_handle::<IflaInfo>()
    {
        kind = lih.get_attr_payload_as_with_len::<String>(IflaInfo::Kind).ok();
        // IFLA_INFO_DATA means something else for every kind: decode it only for tun.
        if kind.as_deref() == Some("tun")
            && let Some(data) = lih.get_attribute(IflaInfo::Data)
        {
            tun_type = super::attrs(data.rta_payload().as_ref())
                .find(|(t, _)| *t == IFLA_TUN_TYPE)
                .and_then(|(_, p)| p.first().copied());
        }
    }
    Some(Link {
        index: *info.ifi_index(),
        name,
        kind,
        tun_type,
        group: h.get_attr_payload_as::<u32>(Ifla::Group).unwrap_or(0),
        alias: h.get_attr_payload_as_with_len::<String>(Ifla::Ifalias).ok(),
        carrier: h.get_attr_payload_as::<u8>(Ifla::Carrier).is_ok_and(|c| c == 1),
    })
}

/// Sends one request per item (pipelined, `PIPELINE` per send) and returns each ACK.
fn pipelined(
    sock: &mut Socket,
    items: &[i32],
    build: impl Fn(i32) -> Result<(Rtm, Ifinfomsg), Errno>,
) -> Vec<Result<(), Errno>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PIPELINE) {
        let first = sock.reserve_seqs(chunk.len() as u32);
        let mut w = Writer::default();
        let mut results: Vec<Option<Result<(), Errno>>> = vec![None; chunk.len()];
        for (i, &idx) in chunk.iter().enumerate() {
            match build(idx).and_then(|(ty, m)| {
                encode(
                    ty,
                    NLM_F_REQUEST | NLM_F_ACK,
                    first.wrapping_add(i as u32),
                    &m,
                    &mut w,
                )
            }) {
                Ok(()) => {}
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if let Err(e) = sock.send(&w.buf) {
            out.extend(std::iter::repeat_n(Err(e), chunk.len()));
            continue;
        }
        let mut pending = results.iter().filter(|r| r.is_none()).count();
        let mut buf = Vec::new();
        while pending > 0 {
            let data = match sock.recv(&mut buf) {
                Ok(d) => d,
                Err(e) => {
                    // Lost or late ACKs: the caller re-dumps to learn the truth.
                    for r in results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(e));
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
                        Err(Errno::from_raw_os_error(code))
                    });
                    pending -= 1;
                }
            }
        }
        out.extend(results.into_iter().map(|r| r.unwrap_or(Err(Errno::PROTO))));
    }
    out
}

/// Deletes links by index, one RTM_DELLINK each. ENODEV (already gone) is success.
pub fn delete_each(sock: &mut Socket, indexes: &[i32]) -> Vec<Result<(), Errno>> {
    sock.grow_buffers(4 << 20);
    pipelined(sock, indexes, |idx| {
        Ok((Rtm::Dellink, ifinfomsg(idx, RtBuffer::new())?))
    })
    .into_iter()
    .map(|r| match r {
        Err(Errno::NODEV) => Ok(()),
        other => other,
    })
    .collect()
}

/// A link group no link in `links` uses (group 0 is everyone's default: never that).
pub fn free_group(links: &[Link], seed: u32) -> u32 {
    let mut g = 0x5e00_0000 | (seed & 0x00ff_ffff);
    while g == 0 || links.iter().any(|l| l.group == g) {
        g = g.wrapping_add(1);
    }
    g
}

/// Deletes the given links (indexes from a fresh dump) in one kernel batch when it can:
/// move them into an unused group, check from a new dump that the group holds exactly
/// these links, delete the group. Anything that goes wrong falls back to per-link deletes.
/// Returns one result per index; the caller confirms with a dump.
pub fn delete_many(sock: &mut Socket, all: &[Link], indexes: &[i32], seed: u32) -> Vec<Result<(), Errno>> {
    if indexes.len() < 2 {
        return delete_each(sock, indexes);
    }
    sock.grow_buffers(4 << 20);
    let group = free_group(all, seed);
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
                Ok(()) => sock.request_ack(&w.buf, seq).is_ok(),
                Err(_) => false,
            }
        };
    if group_ok {
        return set
            .into_iter()
            .map(|r| match r {
                Err(Errno::NODEV) => Ok(()),
                other => other,
            })
            .collect();
    }
    // The kernel refused the group path: per-link, and report each link's own answer.
    let each = delete_each(sock, indexes);
    set.into_iter()
        .zip(each)
        .map(|(s, e)| match (s, e) {
            (_, Ok(())) => Ok(()),
            (Err(se), Err(_)) if se != Errno::NODEV => Err(se),
            (_, Err(ee)) => Err(ee),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: i32, group: u32) -> Link {
        Link {
            index,
            name: format!("l{index}"),
            kind: None,
            tun_type: None,
            group,
            alias: None,
            carrier: false,
        }
    }

    #[test]
    fn free_group_avoids_used_and_zero() {
        let links = [link(1, 0), link(2, 0x5e00_0007)];
        assert_eq!(free_group(&links, 7), 0x5e00_0008);
        assert_eq!(free_group(&links, 9), 0x5e00_0009);
        assert_ne!(free_group(&[], 0), 0);
    }

    #[test]
    fn request_encoding_is_ifinfomsg() {
        let mut w = Writer::default();
        let m = ifinfomsg(42, group_attr(7).unwrap()).unwrap();
        encode(Rtm::Dellink, NLM_F_REQUEST | NLM_F_ACK, 9, &m, &mut w).unwrap();
        let msg = messages(&w.buf).next().unwrap().unwrap();
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
