//! The little of the kernel's BTF (`/sys/kernel/btf/vmlinux`) that the kernel-reason programs
//! need: byte offsets of a few struct members (`sk_buff`'s header offsets, `sock_common`'s
//! addresses and ports) and the names of two enums (`sk_rst_reason`, `skb_drop_reason`).
//!
//! Read at load time, so the programs follow the running kernel's layout instead of a layout
//! compiled in; anything missing is an error the caller logs before it goes on without kernel
//! reasons. Hand-written (BTF's format is a header, a type section and a string table, see the
//! kernel's Documentation/bpf/btf.rst): aya keeps its BTF types crate-private, and the one
//! maintained BTF crate is LGPL, which this Apache/MIT project does not link.

use std::collections::HashMap;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why the BTF could not answer.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Read(&'static str, std::io::Error),
    #[error("not BTF, or not in this machine's byte order")]
    Magic,
    #[error("BTF is truncated or malformed")]
    Malformed,
    #[error("BTF has no {0}")]
    Missing(String),
}

/// One type: its kind, name, `size_or_type` word and the raw bytes of its members.
struct Type {
    kind: u32,
    name: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Index into `Btf::extra` of the kind's trailing data and its member count.
    extra: usize,
    vlen: usize,
}

/// Parsed BTF: types by id (id 0 is void) and the string table.
pub struct Btf {
    types: Vec<Type>,
    extra: Vec<u32>,
    strings: Vec<u8>,
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let s = b.get(at..at + 4).ok_or(BtfError::Malformed)?;
    Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        const PATH: &str = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(PATH).map_err(|e| BtfError::Read(PATH, e))?;
        Self::parse(&data)
    }

    /// Parses raw BTF bytes.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Malformed)?;
        if u16::from_ne_bytes([magic[0], magic[1]]) != 0xeb9f {
            return Err(BtfError::Magic);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed)?;
            data.get(start..start.checked_add(len).ok_or(BtfError::Malformed)?)
                .ok_or(BtfError::Malformed)
        };
        let tsec = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
            vlen: 0,
        }];
        let mut extra = Vec::new();
        let mut at = 0;
        while at < tsec.len() {
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            let size_or_type = u32_at(tsec, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            // Words that follow the common part, per kind.
            let words = match kind {
                1 | 14 | 17 => 1,                            // INT, VAR, DECL_TAG
                3 => 3,                                      // ARRAY
                4 | 5 | 15 | 19 => 3 * vlen,                 // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 2 * vlen,                          // ENUM, FUNC_PROTO
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
                _ => return Err(BtfError::Malformed),
            };
            let start = extra.len();
            for i in 0..words {
                extra.push(u32_at(tsec, at + 4 * i)?);
            }
            at += 4 * words;
            types.push(Type {
                kind,
                name,
                kind_flag: info >> 31 != 0,
                size_or_type,
                extra: start,
                vlen,
            });
        }
        let mut btf = Self {
            types,
            extra,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64) && t.name != 0 {
                let name = btf.string(t.name).to_owned();
                btf.by_name.entry((t.kind, name)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of member `name` in struct/union `t`, looking into anonymous members.
    fn member_bits(&self, t: &Type, name: &str) -> Option<u32> {
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in 0..t.vlen {
            let w = &self.extra[t.extra + 3 * m..t.extra + 3 * m + 3];
            let (mname, mtype, moff) = (w[0], w[1], w[2]);
            let bits = if t.kind_flag { moff & 0xff_ffff } else { moff };
            if mname != 0 {
                if self.string(mname) == name {
                    return Some(bits);
                }
            } else if let Some(inner) = self.resolve(mtype)
                && let Some(b) = self.member_bits(inner, name)
            {
                return Some(bits + b);
            }
        }
        None
    }

    /// Byte offset of member `member` of `struct name` (anonymous unions and structs in
    /// between included).
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {name}.{member}"));
        let id = *self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .ok_or_else(missing)?;
        let t = &self.types[id as usize];
        let bits = self.member_bits(t, member).ok_or_else(missing)?;
        if bits % 8 != 0 {
            return Err(missing());
        }
        Ok(bits / 8)
    }

    /// The values and names of `enum name`, with `strip` taken off each name's front.
    pub fn enum_names(&self, name: &str, strip: &str) -> Result<Vec<(u64, String)>, BtfError> {
        let (kind, id) = [KIND_ENUM, KIND_ENUM64]
            .into_iter()
            .find_map(|k| Some((k, *self.by_name.get(&(k, name.to_owned()))?)))
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let t = &self.types[id as usize];
        let per = if kind == KIND_ENUM { 2 } else { 3 };
        Ok((0..t.vlen)
            .map(|i| {
                let w = &self.extra[t.extra + per * i..t.extra + per * i + per];
                let value = if kind == KIND_ENUM {
                    u64::from(w[1])
                } else {
                    u64::from(w[1]) | (u64::from(w[2]) << 32)
                };
                let n = self.string(w[0]);
                (value, n.strip_prefix(strip).unwrap_or(n).to_owned())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF where the machine exposes it (CI's does): the offsets the
    /// programs need exist and agree with what the kernel's own tracepoint formats say.
    #[test]
    fn the_running_kernel_names_what_the_programs_need() {
        let btf = match Btf::from_sys_fs() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIPPED: no kernel BTF here: {e}");
                return;
            }
        };
        for m in ["head", "network_header", "transport_header"] {
            assert!(btf.offset("sk_buff", m).is_ok(), "sk_buff.{m}");
        }
        // In `struct sock_common` the addresses come first (an anonymous union at offset 0).
        assert_eq!(btf.offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(btf.offset("sock_common", "skc_rcv_saddr").unwrap(), 4);
        assert_eq!(btf.offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.offset("sock_common", "skc_num").unwrap(), 14);
        let rst = btf.enum_names("sk_rst_reason", "SK_RST_REASON_").unwrap();
        assert!(
            rst.iter().any(|(v, n)| *v == 1 && n == "NO_SOCKET"),
            "{rst:?}"
        );
        let drop = btf
            .enum_names("skb_drop_reason", "SKB_DROP_REASON_")
            .unwrap();
        assert!(drop.iter().any(|(_, n)| n == "TCP_LISTEN_OVERFLOW"));
        assert!(btf.offset("sk_buff", "no_such_member").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(Btf::parse(b""), Err(BtfError::Malformed)));
        assert!(matches!(Btf::parse(&[0u8; 24]), Err(BtfError::Magic)));
        let mut hdr = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        hdr.extend_from_slice(&[0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(Btf::parse(&hdr), Err(BtfError::Malformed)));
    }
}
