//! Bulwark's XDP program. TCP to one of the SMTP ports from a source on the drop list
//! (LPM tries for IPv4 and IPv6) or with an unexpired dynamic block (an LRU hash whose
//! values are expiry times, checked here) is dropped; everything else passes, and a
//! source on the approved list always passes.
//!
//! The tries come in two sets; `ACTIVE[0]` says which one the program reads, so the
//! loader fills the other, flips the index, then empties the old one: a new list never
//! shows half-written and there is no moment when an allowed source is dropped.
//!
//! Addresses are keyed in their IPv6 form (IPv4 as `::ffff:a.b.c.d`), prefixes over the
//! 128 bits. Dynamic blocks are keyed by client: the address masked to the engine's
//! client prefix (`PREFIXES`: IPv4 24..=32, IPv6 48..=64), with that prefix written in
//! an octet the mask leaves zero (octet 0 of an IPv4 key, octet 15 of an IPv6 one), as
//! `bulwark_policy::dynamic_key` makes them.

#![no_std]
#![no_main]

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie, LruHashMap, PerCpuArray};
use aya_ebpf::programs::XdpContext;

const TRIE_ENTRIES: u32 = 1 << 18;

#[map]
static ALLOW_A: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static DROP_A: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static ALLOW_B: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
#[map]
static DROP_B: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRIE_ENTRIES, 0);
/// Which set is in force: 0 (A) or 1 (B).
#[map]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
/// Dynamic blocks: key as above, value the `bpf_ktime_get_ns` time the block ends.
#[map]
static DYNAMIC: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(1 << 20, 0);
/// The client prefixes of dynamic blocks: IPv4 (24..=32), IPv6 (48..=64); 0: 32 and 64.
#[map]
static PREFIXES: Array<u32> = Array::with_max_entries(2, 0);
/// The SMTP ports watched (0: unused slot).
#[map]
static PORTS: Array<u16> = Array::with_max_entries(8, 0);
/// Packets by outcome: 0 passed (to a watched port), 1 dropped by the lists, 2 dropped
/// by a dynamic block.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;

#[xdp]
pub fn bulwark_xdp(ctx: XdpContext) -> u32 {
    decide(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// A bounds-checked pointer to `len` octets at `offset` in the packet.
#[inline(always)]
fn at(ctx: &XdpContext, offset: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const u8)
}

#[inline(always)]
fn be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = at(ctx, offset, 2)?;
    // SAFETY: two octets inside the packet, checked by `at`.
    Some(unsafe { u16::from_be_bytes([*p, *p.add(1)]) })
}

#[inline(always)]
fn count(i: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(i) {
        // SAFETY: a per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn watched(port: u16) -> bool {
    let mut i = 0u32;
    while i < 8 {
        if let Some(p) = PORTS.get(i)
            && *p != 0
            && *p == port
        {
            return true;
        }
        i += 1;
    }
    false
}

fn decide(ctx: &XdpContext) -> Option<u32> {
    let mut l3 = ETH_HLEN;
    let mut proto = be16(ctx, 12)?;
    if proto == ETH_P_8021Q {
        proto = be16(ctx, 16)?;
        l3 += 4;
    }
    let mut src = [0u8; 16];
    let l4 = match proto {
        ETH_P_IP => {
            let ip = at(ctx, l3, 20)?;
            // SAFETY: the 20-octet IPv4 header is inside the packet.
            let (ihl, protocol) = unsafe { ((*ip & 0x0f) as usize * 4, *ip.add(9)) };
            if protocol != IPPROTO_TCP || ihl < 20 {
                return None;
            }
            src[10] = 0xff;
            src[11] = 0xff;
            let s = at(ctx, l3 + 12, 4)?;
            // SAFETY: checked by `at`.
            unsafe {
                src[12] = *s;
                src[13] = *s.add(1);
                src[14] = *s.add(2);
                src[15] = *s.add(3);
            }
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let ip = at(ctx, l3, 40)?;
            // SAFETY: the 40-octet IPv6 header is inside the packet. Extension headers
            // are not walked: such packets pass (the engine still refuses at accept).
            if unsafe { *ip.add(6) } != IPPROTO_TCP {
                return None;
            }
            let s = at(ctx, l3 + 8, 16)?;
            let mut i = 0;
            while i < 16 {
                // SAFETY: 16 octets checked by `at`.
                src[i] = unsafe { *s.add(i) };
                i += 1;
            }
            l3 + 40
        }
        _ => return None,
    };
    let port = be16(ctx, l4 + 2)?;
    if !watched(port) {
        return None;
    }
    let b = ACTIVE.get(0).copied().unwrap_or(0) == 1;
    let key = Key::new(128, src);
    let (allow, deny) = if b {
        (&ALLOW_B, &DROP_B)
    } else {
        (&ALLOW_A, &DROP_A)
    };
    if allow.get(&key).is_some() {
        count(0);
        return Some(xdp_action::XDP_PASS);
    }
    if deny.get(&key).is_some() {
        count(1);
        return Some(xdp_action::XDP_DROP);
    }
    let v4 = src[10] == 0xff && src[11] == 0xff && src[..10] == [0u8; 10];
    let prefix = match (v4, PREFIXES.get(if v4 { 0 } else { 1 }).copied()) {
        (true, Some(p)) if (24..=32).contains(&p) => p,
        (true, _) => 32,
        (false, Some(p)) if (48..=64).contains(&p) => p,
        (false, _) => 64,
    };
    let bits = if v4 { 96 + prefix } else { prefix };
    let mut dynamic = src;
    let mut i = 0u32;
    while i < 16 {
        let keep = bits as i32 - 8 * i as i32;
        if keep <= 0 {
            dynamic[i as usize] = 0;
        } else if keep < 8 {
            dynamic[i as usize] &= 0xffu8 << (8 - keep);
        }
        i += 1;
    }
    if v4 {
        dynamic[0] = prefix as u8;
    } else {
        dynamic[15] = prefix as u8;
    }
    // SAFETY: the value is read once; the loader replaces entries, never frees them
    // under us (an LRU eviction at worst makes this a miss).
    if let Some(until) = unsafe { DYNAMIC.get(&dynamic) }
        && *until > unsafe { bpf_ktime_get_ns() }
    {
        count(2);
        return Some(xdp_action::XDP_DROP);
    }
    count(0);
    Some(xdp_action::XDP_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
