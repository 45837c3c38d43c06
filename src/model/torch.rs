//! `pytorch_model.bin` (what `torch.save(state_dict)` writes) read without running it.
//!
//! The file is a zip archive: `<name>/data.pkl`, a pickle that describes the state dict, and
//! one `<name>/data/<key>` entry of raw little-endian bytes per storage. A pickle is a
//! program for a stack machine that may call any Python function, so it is never run as
//! such: `Unpickler` below knows the handful of opcodes that state dicts use and the few
//! globals that `torch.load(weights_only=True)` allows for them (`OrderedDict`, the tensor
//! and parameter rebuild functions, the float32/float16/bfloat16/int64 storage types), and
//! refuses anything else before it could matter. Calling those globals is interpreted here:
//! `_rebuild_tensor_v2` becomes a view of a storage, nothing else is ever called.
//!
//! No crate fits the pickle part: serde-pickle has no persistent-id hook (how tensors point
//! at their storages) and resolves unknown globals to None instead of refusing them. The zip
//! part uses the `zip` crate (stored entries: what torch writes).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use safetensors::Dtype;

/// One tensor of the state dict, contiguous, little-endian, in its stored dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

type Res<T> = Result<T, String>;

/// The tensors of a `torch.save`d state dict, by name.
pub fn read(path: &Path) -> Res<BTreeMap<String, Tensor>> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // mapped, not read: a checkpoint of a GB is then not held twice while its tensors are copied
    // SAFETY: only read while this function runs; a concurrent truncation by another process
    // would be a SIGBUS, which read() could not prevent either.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
    read_bytes(&map)
}

pub fn read_bytes(bytes: &[u8]) -> Res<BTreeMap<String, Tensor>> {
    if !bytes.starts_with(b"PK\x03\x04") {
        if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
            return Err("a legacy (pre-1.6, non-zip) PyTorch file; re-save it with a current torch (torch.save(torch.load(f), f))".into());
        }
        return Err("not a PyTorch checkpoint (expected a zip archive written by torch.save)".into());
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .ok_or("the archive has no data.pkl: not written by torch.save")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let entry = |zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| -> Res<Option<Vec<u8>>> {
        let mut f = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format!("{name}: {e}")),
        };
        // a hostile header may claim any size: never reserve more than the archive holds
        let mut out = Vec::with_capacity((f.size() as usize).min(bytes.len()));
        f.read_to_end(&mut out).map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(out))
    };
    if let Some(order) = entry(&mut zip, &format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(format!("byteorder {:?}: only little-endian checkpoints are read", String::from_utf8_lossy(&order)));
        }
    }
    let pickle = entry(&mut zip, &pkl)?.expect("listed entry");
    let top = Unpickler::new(&pickle).run()?;
    let Value::Dict(items) = top else { return Err("data.pkl does not hold a state dict (a mapping of names to tensors)".into()) };
    let mut storages: HashMap<String, Rc<Vec<u8>>> = HashMap::new();
    let mut out = BTreeMap::new();
    for (k, v) in items.borrow().iter() {
        let Value::Str(name) = k else { return Err("a state-dict key is not a string".into()) };
        let Value::Tensor(t) = v else {
            return Err(format!("state-dict entry {name} is not a tensor"));
        };
        let data = match storages.get(&t.storage.key) {
            Some(d) => d.clone(),
            None => {
                let e = format!("{prefix}data/{}", t.storage.key);
                let d = Rc::new(entry(&mut zip, &e)?.ok_or_else(|| format!("{name}: its storage {e} is missing from the archive"))?);
                storages.insert(t.storage.key.clone(), d.clone());
                d
            }
        };
        out.insert(name.clone(), t.materialize(&data).map_err(|e| format!("{name}: {e}"))?);
    }
    Ok(out)
}

#[derive(Debug)]
struct Storage {
    dtype: Dtype,
    key: String,
    numel: usize,
}

#[derive(Clone, Debug)]
struct TensorRef {
    storage: Rc<Storage>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn elem_size(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => 8,
    }
}

impl TensorRef {
    /// The tensor's elements, gathered in row-major order from its storage bytes.
    fn materialize(&self, data: &[u8]) -> Res<Tensor> {
        let es = elem_size(self.storage.dtype);
        if self.storage.numel.checked_mul(es) != Some(data.len()) {
            return Err(format!("storage {} has {} bytes, not {} elements of {es} bytes", self.storage.key, data.len(), self.storage.numel));
        }
        let n = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
        if n > 0 {
            // the last element reached must lie inside the storage
            let last = self.shape.iter().zip(&self.stride).try_fold(self.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| a.checked_add(x)));
            if last.is_none_or(|l| l >= self.storage.numel) {
                return Err(format!("view (offset {}, shape {:?}, stride {:?}) reaches past its storage of {} elements", self.offset, self.shape, self.stride, self.storage.numel));
            }
        }
        let mut out = Vec::with_capacity(n * es);
        let contiguous = {
            let mut want = 1;
            self.shape.iter().zip(&self.stride).rev().all(|(&d, &s)| {
                let ok = d == 1 || s == want;
                want *= d;
                ok
            })
        };
        if contiguous {
            out.extend_from_slice(&data[self.offset * es..(self.offset + n) * es]);
        } else {
            let mut idx = vec![0usize; self.shape.len()];
            for _ in 0..n {
                let at = self.offset + idx.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
                out.extend_from_slice(&data[at * es..(at + 1) * es]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < self.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        Ok(Tensor { dtype: self.storage.dtype, shape: self.shape.clone(), data: out })
    }
}

/// The only callables a state dict may name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(Dtype),
}

fn global(module: &str, name: &str) -> Res<Global> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::StorageType(Dtype::F32),
        ("torch", "HalfStorage") => Global::StorageType(Dtype::F16),
        ("torch", "BFloat16Storage") => Global::StorageType(Dtype::BF16),
        ("torch", "LongStorage") => Global::StorageType(Dtype::I64),
        _ => return Err(format!("the pickle names {module}.{name}, which a state dict never needs; refusing to load it (nothing was run)")),
    })
}

#[derive(Clone, Debug)]
enum Value {
    None,
    /// Booleans and floats appear (requires_grad, metadata) but are never used.
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(TensorRef),
}

fn as_usize(v: &Value, what: &str) -> Res<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => Err(format!("{what} is not a non-negative integer")),
    }
}

fn usizes(v: &Value, what: &str) -> Res<Vec<usize>> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| as_usize(x, what)).collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

/// A pickle VM for the opcodes of protocols 2-5 that state dicts use.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Positions in `stack` where MARKs were pushed.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("data.pkl ends early")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("data.pkl ends early")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn str(&mut self, n: usize) -> Res<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| "a string is not UTF-8")?.to_string()))
    }
    fn pop(&mut self) -> Res<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("data.pkl pops past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "data.pkl pops an empty stack".into())
    }
    fn top(&mut self) -> Res<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "data.pkl reads an empty stack".into())
    }
    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self.marks.pop().ok_or("data.pkl has no MARK to return to")?;
        Ok(self.stack.split_off(m))
    }

    fn run(mut self) -> Res<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto} is not one torch.save writes"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(Default::default())),
                b']' => self.stack.push(Value::List(Default::default())),
                b')' => self.stack.push(Value::Tuple(Default::default())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items: Vec<Value> = (0..n).map(|_| self.pop()).collect::<Res<_>>()?;
                    items.reverse();
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&k).cloned().ok_or_else(|| format!("data.pkl reads memo {k}, never stored"))?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.str(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap());
                    let v = self.str(usize::try_from(n).map_err(|_| "string too long")?)?;
                    self.stack.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement of n bytes
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'N' => self.stack.push(Value::None),
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?;
                    let g = global(&module, name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else { return Err("STACK_GLOBAL of non-strings".into()) };
                    let g = global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: state for the object below; only dicts take it here (an
                    // OrderedDict's attributes, such as a state dict's `_metadata`)
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        _ => return Err("BUILD on an object a state dict does not hold".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let Value::Dict(d) = self.top()? else { return Err("SETITEMS on a non-dict".into()) };
                    let mut d = d.borrow_mut();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    let Value::List(l) = self.top()? else { return Err("APPEND on a non-list".into()) };
                    l.borrow_mut().push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(l) = self.top()? else { return Err("APPENDS on a non-list".into()) };
                    l.borrow_mut().extend(items);
                }
                _ => return Err(format!("pickle opcode 0x{op:02x} at byte {} is not one a state dict uses; refusing to load it (nothing was run)", self.pos - 1)),
            }
        }
    }

    /// A persistent id: `('storage', StorageType, key, location, numel)`.
    fn persistent(&self, pid: Value) -> Res<Value> {
        let Value::Tuple(t) = pid else { return Err("a persistent id is not a tuple".into()) };
        match t.as_slice() {
            [Value::Str(kind), Value::Global(Global::StorageType(dtype)), Value::Str(key), Value::Str(_location), numel] if kind == "storage" => {
                if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                    return Err(format!("storage key {key:?} is not a plain name"));
                }
                Ok(Value::Storage(Rc::new(Storage { dtype: *dtype, key: key.clone(), numel: as_usize(numel, "a storage size")? })))
            }
            _ => Err("a persistent id that is not a tensor storage".into()),
        }
    }

    fn call(&self, f: Value, args: Value) -> Res<Value> {
        let Value::Tuple(args) = args else { return Err("REDUCE arguments are not a tuple".into()) };
        match f {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Default::default())),
            Value::Global(Global::RebuildTensor) => match args.as_slice() {
                // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
                [Value::Storage(s), offset, size, stride, _, _, ..] => {
                    let (shape, stride) = (usizes(size, "a tensor size")?, usizes(stride, "a tensor stride")?);
                    if shape.len() != stride.len() {
                        return Err("a tensor's size and stride differ in length".into());
                    }
                    Ok(Value::Tensor(TensorRef { storage: s.clone(), offset: as_usize(offset, "a storage offset")?, shape, stride }))
                }
                _ => Err("_rebuild_tensor_v2 with unexpected arguments".into()),
            },
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
                _ => Err("_rebuild_parameter of a non-tensor".into()),
            },
            _ => Err("the pickle calls something other than OrderedDict or a tensor rebuild".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dict pickle as torch writes it (protocol 2), for one F32 tensor `w` of shape
    /// [2, 3] on storage "0" with the given offset/stride.
    fn pickle(global_module: &str, global_name: &str, offset: u8, stride: (u8, u8)) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w");
        p.extend(format!("c{global_module}\n{global_name}\n").as_bytes());
        p.extend(b"q\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQK");
        p.push(offset);
        p.extend(b"K\x02K\x03\x86K");
        p.push(stride.0);
        p.push(b'K');
        p.push(stride.1);
        p.extend(b"\x86\x89ccollections\nOrderedDict\n)RtRu}b.");
        p
    }

    fn archive(pkl: &[u8], storage: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        z.start_file("archive/byteorder", opts).unwrap();
        z.write_all(b"little").unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(storage).unwrap();
        z.finish().unwrap();
        buf.into_inner()
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn contiguous_and_strided_views() {
        let storage = floats(&[0., 1., 2., 3., 4., 5., 6., 7.]);
        let t = read_bytes(&archive(&pickle("torch._utils", "_rebuild_tensor_v2", 1, (3, 1)), &storage)).unwrap();
        assert_eq!(t["w"], Tensor { dtype: Dtype::F32, shape: vec![2, 3], data: floats(&[1., 2., 3., 4., 5., 6.]) });
        // a transposed view of a [3, 2] matrix
        let t = read_bytes(&archive(&pickle("torch._utils", "_rebuild_tensor_v2", 0, (1, 2)), &storage)).unwrap();
        assert_eq!(t["w"].data, floats(&[0., 2., 4., 1., 3., 5.]));
    }

    #[test]
    fn foreign_globals_and_bad_storages_are_refused() {
        let storage = floats(&[0.; 8]);
        let e = read_bytes(&archive(&pickle("os", "system", 0, (3, 1)), &storage)).unwrap_err();
        assert!(e.contains("os.system") && e.contains("nothing was run"), "{e}");
        let e = read_bytes(&archive(&pickle("torch._utils", "_rebuild_tensor_v2", 3, (3, 1)), &storage)).unwrap_err();
        assert!(e.contains("reaches past its storage"), "{e}");
        let e = read_bytes(&archive(&pickle("torch._utils", "_rebuild_tensor_v2", 0, (3, 1)), &storage[..20])).unwrap_err();
        assert!(e.contains("not 8 elements"), "{e}");
        let whole = archive(&pickle("torch._utils", "_rebuild_tensor_v2", 0, (3, 1)), &storage);
        assert!(read_bytes(&whole[..whole.len() / 2]).is_err());
        assert!(read_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19").unwrap_err().contains("legacy"));
    }
}
