//! Kernel datapath, independent check of the wire encoding: a table of flows covering every
//! key and action. Each one is added by Debian's `ovs-dpctl add-flow` and printed by
//! `weftctl dp dump-flows` exactly as `ovs-dpctl dump-flows` prints it; then the same flow is
//! added by `weftctl dp add-flow` and `ovs-dpctl dump-flows` prints it exactly as before.
//! Whatever ovs-dpctl installs, weftctl must install too; a flow only weftctl can install
//! (ovs-dpctl's parser or encoding refused) is still printed the same by both. The test
//! prints what the kernel accepted.

mod kernel_support;

use kernel_support::{DpGuard, require_kernel_datapath, sh, sh_try, weftctl};

/// (match, actions) in the syntax both `ovs-dpctl` and `weftctl` take.
const TABLE: &[(&str, &str)] = &[
    // in_port, eth, eth_type, arp
    ("in_port(1),eth(),eth_type(0x0806),arp()", "2"),
    (
        "in_port(1),eth(),eth_type(0x0806),arp(sip=10.0.0.1,tip=10.0.0.2,op=1,sha=00:00:00:00:00:01,tha=00:00:00:00:00:00)",
        "2",
    ),
    // skb_priority, skb_mark, exact eth, ipv4 fields, udp; userspace
    (
        "skb_priority(0x1),in_port(1),skb_mark(0x5),eth(src=00:00:00:00:00:01,dst=00:00:00:00:00:02),eth_type(0x0800),ipv4(src=10.0.0.1,dst=10.0.0.2,proto=17,tos=0x10,ttl=64,frag=no),udp(src=68,dst=67)",
        "userspace(pid=1234,userdata(0a0b0c0d0e0f1011))",
    ),
    // recirc_id, dp_hash, ipv4 prefix; hash, recirc
    (
        "recirc_id(0),dp_hash(0x1/0xf),in_port(2),eth(),eth_type(0x0800),ipv4(src=10.0.0.0/255.255.255.0,frag=no)",
        "hash(l4(0)),recirc(2)",
    ),
    // tcp and tcp_flags; ct(commit,zone)
    (
        "in_port(1),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(src=1000,dst=80),tcp_flags(+syn-ack)",
        "ct(commit,zone=5),recirc(1)",
    ),
    // tcp without tcp_flags
    (
        "in_port(1),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(dst=80)",
        "2",
    ),
    // sctp; sample
    (
        "in_port(1),eth(),eth_type(0x0800),ipv4(proto=132,frag=no),sctp(dst=9)",
        "sample(sample=50.0%,actions(2))",
    ),
    // icmp; clone
    (
        "in_port(1),eth(),eth_type(0x0800),ipv4(proto=1,frag=no),icmp(type=8,code=0)",
        "clone(2),3",
    ),
    // ipv6 with prefix, tcp; ct mark
    (
        "in_port(1),eth(),eth_type(0x86dd),ipv6(src=2001:db8::1,dst=2001:db8::/ffff:ffff::,proto=6,frag=no),tcp(dst=443),tcp_flags(0/0)",
        "ct(commit,zone=9,mark=0x1/0xffffffff),2",
    ),
    // icmpv6 + nd; drop
    (
        "in_port(1),eth(),eth_type(0x86dd),ipv6(proto=58,frag=no),icmpv6(type=135,code=0),nd(target=fe80::1)",
        "drop",
    ),
    // ipv6 later fragments, label/tclass/hlimit
    (
        "in_port(1),eth(),eth_type(0x86dd),ipv6(src=fe80::1,label=0x12345,tclass=0x10,hlimit=64,frag=later)",
        "2",
    ),
    // ipv6 udp; set udp
    (
        "in_port(1),eth(),eth_type(0x86dd),ipv6(proto=17,frag=no),udp(dst=53)",
        "set(udp(src=5353)),2",
    ),
    // vlan + encap; pop_vlan
    (
        "in_port(1),eth(),eth_type(0x8100),vlan(vid=10,pcp=0),encap(eth_type(0x0800),ipv4(frag=no))",
        "pop_vlan,2",
    ),
    // push_vlan
    (
        "in_port(5),eth(dst=00:00:00:00:00:09),eth_type(0x0800),ipv4(proto=17,frag=no),udp(src=68,dst=67)",
        "push_vlan(vid=10,pcp=0),2",
    ),
    // tunnel match: id, src, dst, ttl, flags
    (
        "tunnel(tun_id=0x5,src=192.168.1.1,dst=192.168.1.2,ttl=64/0,flags(-df-csum+key)),in_port(3),eth(),eth_type(0x0800),ipv4(frag=no)",
        "1",
    ),
    // tunnel match: tos, tp_src, tp_dst
    (
        "tunnel(tun_id=0x7,src=192.168.1.1,dst=192.168.1.2,tos=0x10,ttl=64,tp_src=1000,tp_dst=4789,flags(+df-csum+key)),in_port(3),eth(),eth_type(0x0806),arp()",
        "1",
    ),
    // tunnel match: geneve options
    (
        "tunnel(tun_id=0x5,src=192.168.1.1,dst=192.168.1.2,ttl=64/0,geneve({class=0x102,type=0x80,len=4,0xa}),flags(-df-csum+key)),in_port(3),eth(),eth_type(0x0800),ipv4(frag=no)",
        "1",
    ),
    // set tunnel
    (
        "in_port(1),eth(),eth_type(0x0800),ipv4(frag=no)",
        "set(tunnel(tun_id=0x5,dst=192.168.1.2,ttl=64,tp_dst=4789,flags(df|key))),3",
    ),
    // set tunnel with src, tos and geneve options
    (
        "in_port(2),eth(),eth_type(0x0800),ipv4(frag=no)",
        "set(tunnel(tun_id=0x5,src=192.168.1.1,dst=192.168.1.2,tos=0x10,ttl=64,tp_dst=6081,geneve({class=0x102,type=0x80,len=4,0xa}),flags(df|key))),3",
    ),
    // ct_state, ct_zone, ct_mark, ct_label; ct_clear
    (
        "recirc_id(0x3),in_port(10),ct_state(-new+est+trk),ct_zone(0x5),ct_mark(0x1),ct_label(0x1),eth(),eth_type(0x0800),ipv4(frag=no)",
        "ct_clear,2",
    ),
    // ct original tuple
    (
        "recirc_id(0x1),in_port(1),ct_state(+trk),ct_tuple4(src=10.0.0.1,dst=10.0.0.2,proto=6,tp_src=1000,tp_dst=80),eth(),eth_type(0x0800),ipv4(frag=no)",
        "2",
    ),
    // ct nat to an address and port
    (
        "recirc_id(0),in_port(4),eth(),eth_type(0x0800),ipv4(dst=10.96.0.10,proto=6,frag=no),tcp(dst=80),tcp_flags(0/0)",
        "ct(commit,zone=7,nat(dst=10.0.0.5:8080)),recirc(2)",
    ),
    // ct snat with address and port ranges
    (
        "in_port(19),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(dst=80),tcp_flags(0/0)",
        "ct(commit,nat(src=10.0.0.1-10.0.0.9:1024-2048,random)),2",
    ),
    // ct label; ct without commit, bare nat
    (
        "in_port(20),eth(),eth_type(0x0800),ipv4(frag=no)",
        "ct(commit,zone=3,label=0x1/0xff),2",
    ),
    (
        "in_port(21),eth(),eth_type(0x0800),ipv4(frag=no)",
        "ct(zone=3,nat),recirc(5)",
    ),
    // ipv6 snat
    (
        "in_port(18),eth(),eth_type(0x86dd),ipv6(src=2001:db8::1,proto=6,frag=no),tcp(dst=443),tcp_flags(0/0)",
        "ct(commit,nat(src=2001:db8::100)),2",
    ),
    // set eth (whole), set_masked eth
    (
        "in_port(9),eth(),eth_type(0x0800),ipv4(frag=no)",
        "set(eth(src=00:00:00:00:00:aa,dst=00:00:00:00:00:bb)),2",
    ),
    (
        "in_port(22),eth(),eth_type(0x0800),ipv4(frag=no)",
        "set(eth(dst=00:00:00:00:00:bb)),2",
    ),
    // set_masked ipv4, ipv6, tcp
    (
        "in_port(14),eth(),eth_type(0x0800),ipv4(frag=no)",
        "set(ipv4(dst=10.0.0.5)),2",
    ),
    (
        "in_port(23),eth(),eth_type(0x86dd),ipv6(frag=no)",
        "set(ipv6(dst=2001:db8::5)),2",
    ),
    (
        "in_port(15),eth(),eth_type(0x0800),ipv4(proto=6,frag=no),tcp(),tcp_flags(0/0)",
        "set(tcp(dst=8080)),2",
    ),
    // trunc, check_pkt_len, meter
    (
        "in_port(16),eth(),eth_type(0x0800),ipv4(frag=no)",
        "trunc(100),2",
    ),
    (
        "in_port(8),eth(),eth_type(0x0800),ipv4(frag=no)",
        "check_pkt_len(size=1500,gt(2),le(3))",
    ),
    (
        "in_port(17),eth(),eth_type(0x0800),ipv4(frag=no)",
        "meter(0),2",
    ),
    // partial eth mask; userspace with userdata
    (
        "in_port(24),eth(src=00:00:00:00:00:01/ff:ff:ff:00:00:00),eth_type(0x0800),ipv4(frag=no)",
        "userspace(pid=7,userdata(0102030405060708)),2",
    ),
];

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn flows_read_back_identically_by_ovs_dpctl_and_weftctl() {
    require_kernel_datapath();
    let w = weftctl();
    let _ = sh_try("ovs-dpctl del-dp ktext 2>/dev/null");
    sh(&format!("{w} dp add-dp ktext"));
    let _dp = DpGuard {
        name: "ktext".into(),
        netns: None,
    };
    let mut report = Vec::new();
    let mut mismatches = Vec::new();
    let mut accepted = 0;
    for (i, (m, a)) in TABLE.iter().enumerate() {
        sh("ovs-dpctl del-flows ktext");
        let (ovs_ok, _, ovs_err) = sh_try(&format!("ovs-dpctl add-flow ktext {} {}", q(m), q(a)));
        let mut ovs_text = String::new();
        if ovs_ok {
            ovs_text = sh("ovs-dpctl dump-flows ktext");
            let weft_text = sh(&format!("{w} dp dump-flows ktext"));
            if weft_text != ovs_text {
                mismatches.push(format!(
                    "row {i}: added by ovs-dpctl\n  ovs-dpctl dump-flows: {ovs_text}  weftctl dump-flows:   {weft_text}"
                ));
            }
        }
        sh("ovs-dpctl del-flows ktext");
        let (weft_ok, _, weft_err) = sh_try(&format!("{w} dp add-flow ktext {} {}", q(m), q(a)));
        if weft_ok {
            let back = sh("ovs-dpctl dump-flows ktext");
            if ovs_ok && back != ovs_text {
                mismatches.push(format!(
                    "row {i}: added by weftctl\n  ovs-dpctl dump-flows: {back}  expected (ovs-dpctl's own): {ovs_text}"
                ));
            }
            if !ovs_ok {
                // ovs-dpctl could not install it (its parser or its encoding was refused):
                // it must still print weftctl's flow the way weftctl does.
                let weft_text = sh(&format!("{w} dp dump-flows ktext"));
                if weft_text != back {
                    mismatches.push(format!(
                        "row {i}: added by weftctl only\n  ovs-dpctl dump-flows: {back}  weftctl dump-flows:   {weft_text}"
                    ));
                }
            }
        } else if ovs_ok {
            mismatches.push(format!(
                "row {i}: ovs-dpctl installed it, weftctl failed: {}",
                weft_err.trim()
            ));
        }
        if weft_ok {
            accepted += 1;
        }
        report.push(format!(
            "{i:2} {:9} {m} {a}{}",
            match (ovs_ok, weft_ok) {
                (true, true) => "accepted",
                (false, false) => "refused",
                (false, true) => "weft-only",
                (true, false) => "DIFFERS",
            },
            if ovs_ok {
                String::new()
            } else {
                format!(
                    "\n      ovs-dpctl: {}\n      weftctl:   {}",
                    ovs_err.trim(),
                    weft_err.trim()
                )
            }
        ));
    }
    println!(
        "what the kernel accepts ({} of {} flows):\n{}",
        accepted,
        TABLE.len(),
        report.join("\n")
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        accepted * 10 >= TABLE.len() * 8,
        "too few flows accepted: {accepted} of {}",
        TABLE.len()
    );
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh inside the guest"]
fn show_prints_what_ovs_dpctl_show_prints() {
    require_kernel_datapath();
    let w = weftctl();
    let _ = sh_try("ovs-dpctl del-dp kshow 2>/dev/null");
    sh(&format!(
        "{w} dp add-dp kshow && {w} dp add-if kshow kshowi,type=internal \
         kshowt,type=vxlan,remote_ip=flow,key=flow kshowg,type=geneve,dst_port=7081"
    ));
    let _dp = DpGuard {
        name: "kshow".into(),
        netns: None,
    };
    sh(&format!(
        "{w} dp add-flow kshow 'in_port(1),eth(),eth_type(0x0806),arp()' 2"
    ));
    let ours = sh(&format!("{w} dp show kshow"));
    let theirs = sh("ovs-dpctl show kshow 2>/dev/null");
    assert_eq!(ours, theirs, "weftctl dp show differs from ovs-dpctl show");
    assert!(
        ours.contains("port 2: kshowt (vxlan: packet_type=ptap)"),
        "{ours}"
    );
    // Ports go away with del-if, and the datapath with del-dp.
    sh(&format!("{w} dp del-if kshow kshowt"));
    assert!(!sh("ovs-dpctl show kshow 2>/dev/null").contains("kshowt"));
    sh(&format!("{w} dp del-dp kshow"));
    let (still, _, _) = sh_try("ovs-dpctl show kshow 2>/dev/null");
    assert!(!still, "kshow still exists after del-dp");
}
