//! Just enough of git's wire formats for a hostile server to speak them: pkt-lines, side-band
//! packets and packfiles (with SHA-1, Adler-32 and uncompressed zlib written here, so the
//! servers can produce byte-exact valid data and then lie about what it means).

use std::io::{self, Read};

/// The largest pkt-line git allows, its 4-byte length prefix included.
pub const MAX_PKT: usize = 65520;

/// A flush packet: the end of a message.
pub const FLUSH: &[u8] = b"0000";

/// A delimiter packet: the end of a section within a protocol v2 message.
pub const DELIM: &[u8] = b"0001";

/// `data` as one pkt-line: 4 hex digits giving the length including themselves, then `data`.
pub fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    assert!(
        data.len() + 4 <= MAX_PKT,
        "a pkt-line holds at most 65516 bytes"
    );
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// `data` on side-band channel `band` (1: pack data, 2: progress, 3: fatal error), split into
/// as many pkt-lines as it takes.
pub fn sideband(band: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 8);
    for chunk in data.chunks(MAX_PKT - 5) {
        let mut line = Vec::with_capacity(chunk.len() + 1);
        line.push(band);
        line.extend_from_slice(chunk);
        out.extend(pkt(line));
    }
    out
}

/// One packet as a server reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Data(Vec<u8>),
    Flush,
    Delim,
    ResponseEnd,
}

/// Reads one pkt-line; the client is the honest side here, so anything malformed is an error.
pub fn read_packet(reader: &mut impl Read) -> io::Result<Packet> {
    let mut head = [0u8; 4];
    reader.read_exact(&mut head)?;
    let length = std::str::from_utf8(&head)
        .ok()
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad pkt-line length"))?;
    match length {
        0 => Ok(Packet::Flush),
        1 => Ok(Packet::Delim),
        2 => Ok(Packet::ResponseEnd),
        3 => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "pkt-line too short",
        )),
        _ => {
            let mut data = vec![0u8; length - 4];
            reader.read_exact(&mut data)?;
            Ok(Packet::Data(data))
        }
    }
}

/// Reads packets up to and including the next flush (or `0002`); delimiters are kept out.
/// `Ok(None)` when the client closed before sending anything.
pub fn read_message(reader: &mut impl Read) -> io::Result<Option<Vec<Vec<u8>>>> {
    let mut lines = Vec::new();
    loop {
        match read_packet(reader) {
            Ok(Packet::Data(data)) => lines.push(data),
            Ok(Packet::Delim) => {}
            Ok(Packet::Flush | Packet::ResponseEnd) => return Ok(Some(lines)),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && lines.is_empty() => {
                return Ok(None);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Object types as a packfile numbers them.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Commit = 1,
    Tree = 2,
    Blob = 3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
        }
    }
}

/// The id git gives an object of `kind` holding `data`, as 40 hex digits.
pub fn object_id(kind: Kind, data: &[u8]) -> String {
    let mut framed = format!("{} {}\0", kind.name(), data.len()).into_bytes();
    framed.extend_from_slice(data);
    hex(&sha1(&framed))
}

/// The 12-byte packfile header promising `count` objects.
pub fn pack_header(count: u32) -> Vec<u8> {
    let mut out = b"PACK".to_vec();
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out
}

/// One undeltified object as a packfile stores it: a type-and-size header, then the content
/// zlib-compressed (here: stored without compression, which zlib allows and keeps this short).
pub fn pack_entry(kind: Kind, data: &[u8]) -> Vec<u8> {
    let mut size = data.len();
    let mut byte = ((kind as u8) << 4) | (size & 0x0f) as u8;
    size >>= 4;
    let mut out = Vec::with_capacity(data.len() + 32);
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    out.extend(zlib_stored(data));
    out
}

/// A complete, valid packfile holding `objects`, trailer included.
pub fn pack(objects: &[(Kind, &[u8])]) -> Vec<u8> {
    let count = u32::try_from(objects.len()).expect("a test pack holds few objects");
    let mut out = pack_header(count);
    for (kind, data) in objects {
        out.extend(pack_entry(*kind, data));
    }
    let trailer = sha1(&out);
    out.extend_from_slice(&trailer);
    out
}

/// A zlib stream of `data` in stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    // 0x78 0x01: deflate with a 32 KiB window, no dictionary; the pair is a multiple of 31 as
    // zlib's header check requires.
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        out.push(u8::from(last));
        let length = block.len() as u16;
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&(!length).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    let mut adler = Adler::default();
    adler.update(data);
    adler.value()
}

/// Adler-32 that can be resumed, so a stream of objects sharing a long prefix costs little.
#[derive(Clone, Copy)]
struct Adler {
    a: u32,
    b: u32,
}

impl Default for Adler {
    fn default() -> Self {
        Self { a: 1, b: 0 }
    }
}

impl Adler {
    fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.a = (self.a + u32::from(byte)) % 65521;
            self.b = (self.b + self.a) % 65521;
        }
    }

    fn value(self) -> u32 {
        (self.b << 16) | self.a
    }
}

/// Pack entries of distinct blobs, for ever: a fixed body with a counter at its end, so each
/// entry is a new object and costs a copy rather than a checksum of the whole body.
pub struct BlobStream {
    body: Vec<u8>,
    body_adler: Adler,
    header: Vec<u8>,
    counter: u64,
}

impl BlobStream {
    /// Blobs of `body_len + 8` bytes (at most 65535, one stored deflate block).
    pub fn new(body_len: usize) -> Self {
        let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
        let mut body_adler = Adler::default();
        body_adler.update(&body);
        let header = pack_entry(Kind::Blob, &vec![0u8; body_len + 8]);
        let header = header[..header.len() - (body_len + 8) - 4].to_vec();
        Self {
            body,
            body_adler,
            header,
            counter: 0,
        }
    }

    pub fn next_entry(&mut self) -> Vec<u8> {
        self.counter += 1;
        let tail = self.counter.to_be_bytes();
        let mut adler = self.body_adler;
        adler.update(&tail);
        let mut out = Vec::with_capacity(self.header.len() + self.body.len() + 12);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&tail);
        out.extend_from_slice(&adler.value().to_be_bytes());
        out
    }
}

/// SHA-1 as FIPS 180-4 describes it; packfile trailers and object ids need it.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut state: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut message = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = state;
        for (i, word) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let next = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*word);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = next;
        }
        for (slot, value) in state.iter_mut().zip([a, b, c, d, e]) {
            *slot = slot.wrapping_add(value);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn wire_formats_match_git() {
    // Known answers: FIPS 180's "abc", git's empty tree and empty blob.
    assert_eq!(
        hex(&sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        hex(&sha1(b"tree 0\0")),
        "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    );
    assert_eq!(
        object_id(Kind::Blob, b""),
        "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    );
    // 55, 56 and 64 bytes straddle SHA-1's padding boundaries.
    assert_eq!(
        hex(&sha1(&[b'a'; 56])),
        "c2db330f6083854c99d4b5bfb6e8f29f201be699"
    );
    assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    assert_eq!(pkt("a\n"), b"0006a\n");
    let mut stream = BlobStream::new(1000);
    let mut first = (0..1000).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    first.extend_from_slice(&1u64.to_be_bytes());
    assert_eq!(stream.next_entry(), pack_entry(Kind::Blob, &first));
    // git itself must accept the pack: `git index-pack` checks trailer, zlib and object ids.
    let blob: &[u8] = b"hello\n";
    let bytes = pack(&[(Kind::Blob, blob), (Kind::Blob, &[7u8; 70_000])]);
    let dir = tempfile::tempdir().expect("a directory for the pack");
    let path = dir.path().join("test.pack");
    std::fs::write(&path, &bytes).expect("write the pack");
    let output = std::process::Command::new("git")
        .args(["index-pack", "-o"])
        .arg(dir.path().join("test.idx"))
        .arg(&path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git index-pack");
    assert!(
        output.status.success(),
        "git index-pack rejected the pack: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pack_id = hex(&bytes[bytes.len() - 20..]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), pack_id);
    assert_eq!(
        object_id(Kind::Blob, blob),
        "ce013625030ba8dba906f756967f9e9ca394464a"
    );
}
