//! A small SDK for the l8/1 ABI (docs/wasm-abi.md), `no_std`, for wasm32-unknown-unknown.
//!
//! Memory is a bump allocator above the linker's `__heap_base`. The host calls `l8_alloc` once per
//! call, for the input, before it calls an export; that is when everything the previous call
//! allocated is given back, so slices handed out live until the call ends.

use core::arch::wasm32;

#[link(wasm_import_module = "l8")]
extern "C" {
    fn call(op: i32, req: *const u8, req_len: i32, resp: *mut u8, resp_cap: i32) -> i64;
    fn take(dst: *mut u8) -> i32;
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: i32);
}

extern "C" {
    static __heap_base: u8;
}

pub const STATE_GET: i32 = 1;
pub const STATE_SET: i32 = 2;
pub const STATE_DELETE: i32 = 3;
pub const PUBLISH: i32 = 4;
pub const INVOKE: i32 = 5;
pub const NEXT_ID: i32 = 6;
pub const CONFIGURATION_GET: i32 = 7;
pub const NOT_FOUND: i64 = -1;
pub const RETRY: i64 = -1;
pub const DROP: i64 = -2;

static mut TOP: usize = 0;

fn base() -> usize {
    unsafe { (&__heap_base as *const u8 as usize + 7) & !7 }
}

/// Room for `n` bytes until the call ends; traps when memory cannot grow (the host's cap).
pub fn alloc(n: usize) -> &'static mut [u8] {
    unsafe {
        if TOP == 0 {
            TOP = base();
        }
        let ptr = TOP;
        let end = (ptr + n + 7) & !7;
        let have = wasm32::memory_size(0) * 65536;
        if end > have {
            let pages = (end - have + 65535) / 65536;
            if wasm32::memory_grow(0, pages) == usize::MAX {
                wasm32::unreachable();
            }
        }
        TOP = end;
        core::slice::from_raw_parts_mut(ptr as *mut u8, n)
    }
}

#[no_mangle]
pub extern "C" fn l8_alloc(len: i32) -> i32 {
    unsafe {
        TOP = base();
    }
    alloc(len as usize).as_mut_ptr() as i32
}

/// The input of a call: (meta JSON, data).
pub fn input(ptr: i32, len: i32) -> (&'static [u8], &'static [u8]) {
    let all = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
    let meta_len = u32::from_le_bytes([all[0], all[1], all[2], all[3]]) as usize;
    (&all[4..4 + meta_len], &all[4 + meta_len..])
}

/// The return value that hands `out` to the host.
pub fn output(out: &[u8]) -> i64 {
    ((out.as_ptr() as i64) << 32) | out.len() as i64
}

/// Concatenates parts into one slice.
pub fn concat(parts: &[&[u8]]) -> &'static [u8] {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    let buf = alloc(n);
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    buf
}

/// Runs op with the given fields: the answer, or the negative code of the call.
pub fn host(op: i32, fields: &[&[u8]]) -> Result<&'static [u8], i64> {
    let n: usize = fields.iter().map(|f| 4 + f.len()).sum();
    let req = alloc(n);
    let mut at = 0;
    for f in fields {
        req[at..at + 4].copy_from_slice(&(f.len() as u32).to_le_bytes());
        req[at + 4..at + 4 + f.len()].copy_from_slice(f);
        at += 4 + f.len();
    }
    let buf = alloc(256);
    let got = unsafe { call(op, req.as_ptr(), n as i32, buf.as_mut_ptr(), 256) };
    if got < 0 {
        return Err(got);
    }
    if got <= 256 {
        return Ok(&buf[..got as usize]);
    }
    let big = alloc(got as usize);
    unsafe { take(big.as_mut_ptr()) };
    Ok(big)
}

pub fn log(level: i32, text: &[u8]) {
    unsafe { host_log(level, text.as_ptr(), text.len() as i32) }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

pub fn atoi(digits: &[u8]) -> u64 {
    let mut v = 0u64;
    for &c in digits {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    v
}

pub fn itoa(mut v: u64) -> &'static [u8] {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[19 - n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    concat(&[&tmp[20 - n..]])
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}
