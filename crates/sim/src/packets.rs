//! Packets the simulation generates itself: ARP replies, ICMP echo replies, ICMP errors and
//! TCP resets. Built from the triggering packet's fields and, where the reply must quote or
//! echo it, its bytes. Malformed bytes never panic: the reply is then built from the fields
//! alone, or not at all.

use crate::fields::{Fields, ethertype, proto};

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    csum_fold(csum_add(0, data))
}

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ty.to_be_bytes());
}

fn ipv4_header(src: u32, dst: u32, proto: u8, payload_len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    let total = (20 + payload_len).min(usize::from(u16::MAX)) as u16;
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    out.extend_from_slice(&src.to_be_bytes());
    out.extend_from_slice(&dst.to_be_bytes());
    let c = checksum(&out[start..start + 20]);
    out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

/// The IPv4 header and what follows it, if `bytes` hold a well-formed IPv4 frame.
fn ipv4_of(bytes: &[u8]) -> Option<&[u8]> {
    let mut off = 12;
    let mut ty = u16::from_be_bytes([*bytes.get(off)?, *bytes.get(off + 1)?]);
    if ty == ethertype::VLAN {
        off += 4;
        ty = u16::from_be_bytes([*bytes.get(off)?, *bytes.get(off + 1)?]);
    }
    if ty != ethertype::IPV4 {
        return None;
    }
    let ip = bytes.get(off + 2..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.first()? >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl {
        return None;
    }
    Some(&ip[..total.min(ip.len())])
}

fn ipv6_header(src: u128, dst: u128, next: u8, hlimit: u8, payload_len: usize, out: &mut Vec<u8>) {
    let len = payload_len.min(usize::from(u16::MAX)) as u16;
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[next, hlimit]);
    out.extend_from_slice(&src.to_be_bytes());
    out.extend_from_slice(&dst.to_be_bytes());
}

/// The ICMPv6 checksum of `msg` (RFC 4443 2.3: over the pseudo-header of RFC 8200 8.1).
pub fn icmp6_checksum(src: u128, dst: u128, msg: &[u8]) -> u16 {
    let mut sum = csum_add(0, &src.to_be_bytes());
    sum = csum_add(sum, &dst.to_be_bytes());
    sum = csum_add(sum, &(msg.len() as u32).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, proto::ICMPV6]);
    csum_fold(csum_add(sum, msg))
}

/// Appends the Ethernet and IPv6 headers and the ICMPv6 message `msg` (checksum filled in).
fn icmp6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: u128,
    dst: u128,
    hlimit: u8,
    msg: &mut [u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + 40 + msg.len());
    eth(eth_dst, eth_src, ethertype::IPV6, &mut out);
    ipv6_header(src, dst, proto::ICMPV6, hlimit, msg.len(), &mut out);
    msg[2] = 0;
    msg[3] = 0;
    let c = icmp6_checksum(src, dst, msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The IPv6 packet (header and payload as far as present) of a well-formed IPv6 frame.
fn ipv6_of(bytes: &[u8]) -> Option<&[u8]> {
    let mut off = 12;
    let mut ty = u16::from_be_bytes([*bytes.get(off)?, *bytes.get(off + 1)?]);
    if ty == ethertype::VLAN {
        off += 4;
        ty = u16::from_be_bytes([*bytes.get(off)?, *bytes.get(off + 1)?]);
    }
    if ty != ethertype::IPV6 {
        return None;
    }
    let ip = bytes.get(off + 2..)?;
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    Some(&ip[..total.min(ip.len())])
}

/// A solicited neighbour advertisement (RFC 4861 4.4) answering the solicitation `req` for
/// `target`, owned by `mac`, with the router flag when a router port owns it. It carries the
/// target link-layer address option, so the requester needs nothing else.
pub fn neighbour_advert(req: &Fields, target: u128, mac: [u8; 6], router: bool) -> Vec<u8> {
    let flags: u8 = if router { 0xe0 } else { 0x60 };
    let mut msg = [0u8; 32];
    msg[0] = 136;
    msg[4] = flags;
    msg[8..24].copy_from_slice(&target.to_be_bytes());
    msg[24] = 2;
    msg[25] = 1;
    msg[26..32].copy_from_slice(&mac);
    icmp6_frame(req.eth_src, mac, target, req.ipv6_src, 255, &mut msg)
}

/// An ICMPv6 echo reply to the echo request in `bytes` (needs the bytes: the reply echoes
/// them). Only a request whose ICMPv6 header follows the IPv6 header directly is answered.
pub fn icmp6_echo_reply(req: &Fields, bytes: &[u8]) -> Option<Vec<u8>> {
    let ip = ipv6_of(bytes)?;
    if ip[6] != proto::ICMPV6 {
        return None;
    }
    let icmp = &ip[40..];
    if icmp.len() < 8 || icmp[0] != 128 || icmp[1] != 0 {
        return None;
    }
    let mut msg = icmp.to_vec();
    msg[0] = 129;
    Some(icmp6_frame(
        req.eth_src,
        req.eth_dst,
        req.ipv6_dst,
        req.ipv6_src,
        64,
        &mut msg,
    ))
}

/// An ICMPv6 error (`ty`/`code`) from `src` about the packet `orig`, quoting as much of it as
/// fits in the minimum MTU (RFC 4443 3). Without bytes the quote is rebuilt from the fields.
/// Never sent about ICMPv6 errors, later fragments, or packets from the unspecified or a
/// multicast source, or to a multicast destination (RFC 4443 2.4 (e)).
pub fn icmp6_error(orig: &Fields, bytes: &[u8], ty: u8, code: u8, src: u128) -> Option<Vec<u8>> {
    if orig.eth_type != ethertype::IPV6 || orig.ip_frag == 2 {
        return None;
    }
    if orig.ip_proto == proto::ICMPV6 && orig.tp_src < 128 {
        return None;
    }
    if orig.ipv6_src == 0 || orig.ipv6_src >> 120 == 0xff || orig.ipv6_dst >> 120 == 0xff {
        return None;
    }
    let mut msg = vec![ty, code, 0, 0, 0, 0, 0, 0];
    match ipv6_of(bytes) {
        Some(ip) => msg.extend_from_slice(&ip[..ip.len().min(1280 - 48)]),
        None => {
            ipv6_header(
                orig.ipv6_src,
                orig.ipv6_dst,
                orig.ip_proto,
                orig.ip_ttl,
                8,
                &mut msg,
            );
            msg.extend_from_slice(&orig.tp_src.to_be_bytes());
            msg.extend_from_slice(&orig.tp_dst.to_be_bytes());
            msg.extend_from_slice(&[0, 0, 0, 0]);
        }
    }
    Some(icmp6_frame(
        orig.eth_src,
        orig.eth_dst,
        src,
        orig.ipv6_src,
        64,
        &mut msg,
    ))
}

/// An ARP reply to the request in `req`, saying `answer` has the requested address.
pub fn arp_reply(req: &Fields, answer: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    eth(req.eth_src, answer, ethertype::ARP, &mut out);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend_from_slice(&answer);
    out.extend_from_slice(&req.arp_tip.to_be_bytes());
    out.extend_from_slice(&req.arp_sha);
    out.extend_from_slice(&req.arp_sip.to_be_bytes());
    out
}

/// An ICMP echo reply to the echo request in `bytes` (needs the bytes: the reply echoes them).
pub fn icmp_echo_reply(req: &Fields, bytes: &[u8]) -> Option<Vec<u8>> {
    let ip = ipv4_of(bytes)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let icmp = ip.get(ihl..)?;
    if icmp.len() < 8 || icmp[0] != 8 {
        return None;
    }
    let mut out = Vec::with_capacity(14 + 20 + icmp.len());
    eth(req.eth_src, req.eth_dst, ethertype::IPV4, &mut out);
    ipv4_header(
        req.ipv4_dst,
        req.ipv4_src,
        proto::ICMP,
        icmp.len(),
        &mut out,
    );
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&icmp[4..]);
    let c = checksum(&out[start..]);
    out[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// An ICMP error (`ty`/`code`) from `src` about the packet `orig`, quoting its IP header and
/// the first 8 bytes of its payload (RFC 792). Without bytes the quote is rebuilt from the
/// fields. Never sent about ICMP errors or non-first fragments (RFC 1122 3.2.2).
pub fn icmp_error(orig: &Fields, bytes: &[u8], ty: u8, code: u8, src: u32) -> Option<Vec<u8>> {
    if orig.eth_type != ethertype::IPV4 || orig.ip_frag == 2 {
        return None;
    }
    if orig.ip_proto == proto::ICMP && !matches!(orig.tp_src, 0 | 8 | 13 | 15 | 17) {
        return None;
    }
    let mut quote: Vec<u8> = Vec::new();
    match ipv4_of(bytes) {
        Some(ip) => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            quote.extend_from_slice(&ip[..(ihl + 8).min(ip.len())]);
        }
        None => {
            ipv4_header(orig.ipv4_src, orig.ipv4_dst, orig.ip_proto, 8, &mut quote);
            quote[8] = orig.ip_ttl;
            quote[10] = 0;
            quote[11] = 0;
            let c = checksum(&quote[..20]);
            quote[10..12].copy_from_slice(&c.to_be_bytes());
            quote.extend_from_slice(&orig.tp_src.to_be_bytes());
            quote.extend_from_slice(&orig.tp_dst.to_be_bytes());
            quote.extend_from_slice(&[0, 0, 0, 0]);
        }
    }
    let mut out = Vec::with_capacity(14 + 20 + 8 + quote.len());
    eth(orig.eth_src, orig.eth_dst, ethertype::IPV4, &mut out);
    ipv4_header(src, orig.ipv4_src, proto::ICMP, 8 + quote.len(), &mut out);
    let start = out.len();
    out.extend_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&quote);
    let c = checksum(&out[start..]);
    out[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// A TCP reset answering the segment `orig` (RFC 793 "Reset Generation"): if it carried an
/// ACK, the reset takes its sequence number from that ACK; otherwise it acknowledges the
/// segment. A reset is never sent in answer to a reset.
pub fn tcp_rst(orig: &Fields, bytes: &[u8]) -> Option<Vec<u8>> {
    if orig.eth_type != ethertype::IPV4 || orig.ip_proto != proto::TCP {
        return None;
    }
    let (mut seq, mut ack, mut flags) = (0u32, 0u32, 0x14u8);
    if let Some(ip) = ipv4_of(bytes) {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if let Some(tcp) = ip.get(ihl..)
            && tcp.len() >= 20
        {
            let in_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let in_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let in_flags = tcp[13];
            if in_flags & 0x04 != 0 {
                return None;
            }
            let doff = usize::from(tcp[12] >> 4) * 4;
            let payload = tcp.len().saturating_sub(doff) as u32;
            if in_flags & 0x10 != 0 {
                seq = in_ack;
                flags = 0x04;
            } else {
                let syn_fin = u32::from(in_flags & 0x02 != 0) + u32::from(in_flags & 0x01 != 0);
                ack = in_seq.wrapping_add(payload).wrapping_add(syn_fin);
            }
        }
    }
    let mut out = Vec::with_capacity(54);
    eth(orig.eth_src, orig.eth_dst, ethertype::IPV4, &mut out);
    ipv4_header(orig.ipv4_dst, orig.ipv4_src, proto::TCP, 20, &mut out);
    let start = out.len();
    out.extend_from_slice(&orig.tp_dst.to_be_bytes());
    out.extend_from_slice(&orig.tp_src.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
    out.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&orig.ipv4_dst.to_be_bytes());
    pseudo.extend_from_slice(&orig.ipv4_src.to_be_bytes());
    pseudo.extend_from_slice(&[0, proto::TCP, 0, 20]);
    let c = csum_fold(csum_add(csum_add(0, &pseudo), &out[start..]));
    out[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_known_header() {
        // RFC 1071 example header: 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn icmp6_checksum_of_known_message() {
        // An echo request from fe80::1 to fe80::2 (id 0x1234, seq 1, no data). The sum was
        // worked by hand: pseudo-header words fe80+1+fe80+2+8+58, message 8000+1234+1.
        let src = u128::from(0xfe80u16) << 112 | 1;
        let dst = u128::from(0xfe80u16) << 112 | 2;
        let msg = [0x80, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum: u32 = 0xfe80 + 1 + 0xfe80 + 2 + 8 + 58 + 0x8000 + 0x1234 + 1;
        let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
        assert_eq!(icmp6_checksum(src, dst, &msg), folded);
        // A message that carries its checksum sums to zero.
        let mut with = msg;
        with[2..4].copy_from_slice(&folded.to_be_bytes());
        assert_eq!(icmp6_checksum(src, dst, &with), 0);
    }

    #[test]
    fn truncated_or_garbage_bytes_do_not_panic() {
        let f = Fields {
            eth_type: ethertype::IPV4,
            ip_proto: proto::TCP,
            ..Fields::default()
        };
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let _ = tcp_rst(&f, &junk);
            let _ = icmp_error(&f, &junk, 3, 3, 1);
            let _ = icmp_echo_reply(&f, &junk);
            let f6 = Fields {
                eth_type: ethertype::IPV6,
                ip_proto: proto::ICMPV6,
                tp_src: 128,
                ipv6_src: 1,
                ..Fields::default()
            };
            let _ = icmp6_echo_reply(&f6, &junk);
            let _ = icmp6_error(&f6, &junk, 1, 0, 2);
            let mut ip6 = vec![0u8; 12];
            ip6.extend_from_slice(&[0x86, 0xdd, 0x60]);
            ip6.extend_from_slice(&junk);
            let _ = icmp6_echo_reply(&f6, &ip6);
            let _ = icmp6_error(&f6, &ip6, 1, 0, 2);
        }
    }
}
