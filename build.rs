//! Builds the kernels twice:
//! 1. every `kernels/**/*.cu` (and the host-only `kernels/tests/*.cu`) as
//!    host C++ together with the emulator runtime (`kernels/emu/`: fibers,
//!    guarded memory, tensor-core emulation), into a static library with a
//!    registry of every `extern "C" __global__ void NAME(` so Rust launches
//!    kernels by name, as on the GPU;
//! 2. the same with NVRTC (loaded at build time, when found) into PTX for
//!    compute_80 and compute_90 plus cubins for sm_80 and sm_90, embedded
//!    into the crate (the host-only tests only for their ptxas report). The
//!    cubins are built with `ptxas -v`, whose report (registers and static
//!    shared memory per kernel) goes into `ptxas_report.rs` for the launch
//!    checks of src/cuda/limits.rs: the numbers of the very cubins that
//!    ship, with no separate ptxas run.
//!
//! It also reads each kernel's parameter list from its declaration and
//! writes it out as Rust (`kernel_signatures.rs`), so that every launch is
//! checked against the C side (see `src/cuda/launch.rs`). `kernels/emu`,
//! `kernels/include` and `kernels/tests` hold no GPU kernels.
//!
//! Why cubins as well as PTX: a PTX file carries the PTX ISA version of the
//! NVRTC that wrote it (12.9 writes ISA 8.8), and a driver only JIT-compiles
//! ISAs it knows (8.8 needs driver 575+). A cubin is machine code that any
//! CUDA 12 driver loads, and an sm_80 cubin also runs on sm_86/sm_89 (same
//! major version), so sm_80 + sm_90 cover Ampere, Ada and Hopper. The PTX is
//! the fallback for newer GPUs (JIT on a recent enough driver).
//!
//! Without NVRTC the build succeeds with one warning and the CUDA device
//! reports "built without GPU kernels".

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fs;
use std::path::{Path, PathBuf};

/// Virtual architectures for PTX and real ones for cubins.
const PTX_ARCHS: [u32; 2] = [80, 90];
const CUBIN_ARCHS: [u32; 2] = [80, 90];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVRTC_LIB", "CUDA_PATH", "CUDA_INCLUDE_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let kernels_dir = manifest.join("kernels");
    let gpu_sources = cu_files(&kernels_dir, &kernels_dir, &["emu", "include", "tests"]);
    let test_sources = cu_files(&kernels_dir, &kernels_dir.join("tests"), &[]);
    write_signatures(&out, &gpu_sources);
    write_params(&kernels_dir.join("include/params.h"), &out);
    build_emulator(&kernels_dir, &out, &gpu_sources, &test_sources);
    build_gpu(&manifest, &kernels_dir, &out, &gpu_sources, &test_sources);
}

/// A kernel source file.
struct Source {
    path: PathBuf,
    /// Relative to `kernels/`, without `.cu`: `gemm/simt_f32`.
    name: String,
    /// `name` as an identifier: `gemm_simt_f32`.
    stem: String,
}

/// The `.cu` files under `dir`, recursively, except in the subfolders
/// `skip`, sorted; named relative to `root`.
fn cu_files(root: &Path, dir: &Path, skip: &[&str]) -> Vec<Source> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for path in rd.filter_map(|e| e.ok().map(|e| e.path())) {
            let file_name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if d != dir || !skip.contains(&file_name.as_str()) {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "cu") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let name = rel.to_string_lossy().replace('\\', "/");
                files.push(Source {
                    stem: ident(&name),
                    name,
                    path,
                });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// One `extern "C" __global__` kernel: its name and (C type, name) parameters.
struct KernelDecl {
    name: String,
    params: Vec<(String, String)>,
}

/// The kernels declared in one source file.
fn kernel_decls(path: &Path) -> Vec<KernelDecl> {
    const MARK: &str = "extern \"C\" __global__ void ";
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.match_indices(MARK)
        .filter_map(|(at, _)| {
            let mut rest = &text[at + MARK.len()..];
            // `void __launch_bounds__(...) NAME(`: the name follows the bounds.
            if let Some(bounds) = rest.strip_prefix("__launch_bounds__(") {
                rest = &bounds[bounds.find(')')? + 1..];
            }
            let open = rest.find('(')?;
            let name = rest[..open].trim();
            let ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let close = open + rest[open..].find(')')?;
            let list = rest[open + 1..close].trim();
            let params = if list.is_empty() || list == "void" {
                Vec::new()
            } else {
                list.split(',').map(parse_param).collect()
            };
            ok.then(|| KernelDecl {
                name: name.to_string(),
                params,
            })
        })
        .collect()
}

/// `const float* __restrict__ out` -> ("float*", "out").
fn parse_param(decl: &str) -> (String, String) {
    let spaced = decl.replace('*', " * ");
    let mut words: Vec<&str> = spaced
        .split_whitespace()
        .filter(|w| *w != "const" && *w != "__restrict__")
        .collect();
    let name = words.pop().unwrap_or_default().to_string();
    (words.concat(), name)
}

/// The Rust `ParamType` of a kernel parameter's C type.
fn param_type(c_type: &str) -> String {
    let dtype = |t: &str| match t {
        "float" => Some("F32"),
        "u32" => Some("U32"),
        "bf16" | "__nv_bfloat16" => Some("BF16"),
        _ => None,
    };
    match c_type.strip_suffix('*') {
        Some(pointee) => match dtype(pointee) {
            Some(d) => format!("ParamType::Ptr(Some(DType::{d}))"),
            None => "ParamType::Ptr(None)".into(),
        },
        None => match c_type {
            "float" => "ParamType::F32".into(),
            "u32" | "unsigned" => "ParamType::U32".into(),
            "u64" => "ParamType::U64".into(),
            "int" => "ParamType::I32".into(),
            other => format!("ParamType::Struct({other:?})"),
        },
    }
}

/// `kernel_signatures.rs`: every GPU kernel's parameters, for
/// `src/cuda/module.rs`.
fn write_signatures(out: &Path, sources: &[Source]) {
    let mut rs = String::from("pub static KERNEL_SIGNATURES: &[KernelSignature] = &[\n");
    let mut seen = std::collections::HashMap::new();
    for src in sources {
        for k in kernel_decls(&src.path) {
            if let Some(other) = seen.insert(k.name.clone(), src.name.clone()) {
                panic!(
                    "kernel {} is defined in both kernels/{other}.cu and kernels/{}.cu",
                    k.name, src.name
                );
            }
            let params: Vec<String> = k
                .params
                .iter()
                .map(|(ty, name)| {
                    format!(
                        "Param {{ name: {name:?}, ty: {}, c_type: {ty:?} }}",
                        param_type(ty)
                    )
                })
                .collect();
            rs += &format!(
                "    KernelSignature {{ name: {:?}, file: \"{}.cu\", params: &[{}] }},\n",
                k.name,
                src.name,
                params.join(", ")
            );
        }
    }
    rs += "];\n";
    write_if_changed(&out.join("kernel_signatures.rs"), rs.as_bytes());
}

// ---- params.h -------------------------------------------------------------------

/// A C type of params.h: its Rust type, size and alignment.
fn c_type(c: &str, what: &str) -> (&'static str, usize) {
    if c.ends_with('*') {
        return ("u64", 8);
    }
    match c {
        "u64" => ("u64", 8),
        "u32" => ("u32", 4),
        "int" => ("i32", 4),
        "float" => ("f32", 4),
        other => {
            panic!("params.h: {what} has type `{other}`; use u64, u32, int, float or a pointer")
        }
    }
}

/// The Rust doc lines of the `//` comments in `comments`.
fn rust_doc(comments: &[String], indent: &str) -> String {
    comments
        .iter()
        .map(|c| format!("{indent}///{}{c}\n", if c.is_empty() { "" } else { " " }))
        .collect()
}

/// Reads `params.h` (see its header for the two forms it may contain) and
/// writes its Rust twin, `params.rs`, and the layout checks the C side
/// includes, `params_layout.h`.
fn write_params(path: &Path, out: &Path) {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut rs = String::new();
    let mut layout = String::from(
        "// Generated by build.rs from params.h: the struct layouts the Rust twin has.\n#pragma once\n",
    );
    let mut comments: Vec<String> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let (code, comment) = match line.find("//") {
            Some(at) => (line[..at].trim(), Some(line[at + 2..].trim())),
            None => (line.trim(), None),
        };
        if code.is_empty() {
            match comment {
                Some(c) => comments.push(c.to_string()),
                None => comments.clear(),
            }
            continue;
        }
        if let Some(decl) = code.strip_prefix("constexpr ") {
            let decl = decl.trim_end_matches(';');
            let (lhs, value) = decl
                .split_once('=')
                .unwrap_or_else(|| panic!("params.h: `{code}` has no value"));
            let (ty, name) = lhs
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("params.h: `{code}` needs a type and a name"));
            let (rust_ty, _) = c_type(ty.trim(), name);
            let value = value.trim().trim_end_matches(['f', 'u']);
            comments.extend(comment.map(str::to_string));
            rs += &rust_doc(&comments, "");
            rs += &format!("pub const {}: {rust_ty} = {value};\n", name.trim());
        } else if let Some(rest) = code.strip_prefix("struct ") {
            let name = rest.trim_end_matches('{').trim();
            rs += &rust_doc(&comments, "");
            rs += "#[repr(C)]\n#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]\n";
            rs += &format!("pub struct {name} {{\n");
            let mut fields = Vec::new();
            let mut offset = 0;
            let mut align = 1;
            for line in lines.by_ref() {
                let (code, comment) = match line.find("//") {
                    Some(at) => (line[..at].trim(), Some(line[at + 2..].trim())),
                    None => (line.trim(), None),
                };
                if code.starts_with("};") {
                    break;
                }
                if code.is_empty() {
                    continue;
                }
                let decl = code.trim_end_matches(';').replace('*', "* ");
                let mut words: Vec<&str> =
                    decl.split_whitespace().filter(|w| *w != "const").collect();
                let first = words.remove(0);
                let ty = if words.first() == Some(&"*") {
                    words.remove(0);
                    format!("{first}*")
                } else {
                    first.to_string()
                };
                for field in words.join(" ").split(',') {
                    let field = field.trim();
                    let (rust_ty, size) = c_type(&ty, &format!("{name}.{field}"));
                    assert!(
                        offset % size == 0,
                        "params.h: {name}.{field} would follow padding; put 8-byte fields first"
                    );
                    if let Some(c) = comment {
                        rs += &format!("    /// {c}\n");
                    }
                    rs += &format!("    pub {field}: {rust_ty},\n");
                    fields.push((field.to_string(), offset));
                    offset += size;
                    align = align.max(size);
                }
            }
            assert!(
                offset % align == 0,
                "params.h: {name} ends in padding; order its fields by size"
            );
            rs += "}\n";
            rs += &format!("const _: () = assert!(std::mem::size_of::<{name}>() == {offset});\n");
            layout += &format!(
                "static_assert(sizeof({name}) == {offset}, \"{name}: size differs from its Rust twin\");\n"
            );
            // NVRTC has no offsetof: the host compiler checks the offsets
            // (the device lays out u64, int, float and pointers as the host
            // does), NVRTC the size.
            layout += "#ifndef __CUDACC_RTC__\n";
            for (field, at) in &fields {
                rs += &format!(
                    "const _: () = assert!(std::mem::offset_of!({name}, {field}) == {at});\n"
                );
                layout += &format!(
                    "static_assert(__builtin_offsetof({name}, {field}) == {at}, \"{name}.{field}: offset differs from its Rust twin\");\n"
                );
            }
            layout += "#endif\n";
            rs += &format!(
                "impl crate::cuda::launch::KernelParams for {name} {{\n    const C_NAME: &'static str = {name:?};\n}}\n"
            );
        } else if !code.starts_with('#') {
            panic!("params.h: cannot read `{code}`; see the file's header for what it may contain");
        }
        comments.clear();
    }
    write_if_changed(&out.join("params.rs"), rs.as_bytes());
    write_if_changed(&out.join("params_layout.h"), layout.as_bytes());
}

/// Names of the `extern "C" __global__ void NAME(` kernels of one source file.
fn kernel_names(path: &Path) -> Vec<String> {
    kernel_decls(path).into_iter().map(|k| k.name).collect()
}

fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn build_emulator(kernels_dir: &Path, out: &Path, gpu: &[Source], tests: &[Source]) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .include(kernels_dir.join("include"))
        .include(kernels_dir)
        .include(out)
        // Kernels are linked statically; initial-exec TLS keeps the per-worker
        // state they read (threadIdx, the SMEM slots) cheap.
        .flag("-ftls-model=initial-exec")
        // Probe every page of a big stack frame, so a fiber that overflows
        // its stack always hits the guard page instead of a neighbour's stack.
        .flag("-fstack-clash-protection")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-parameter")
        .file(kernels_dir.join("emu/runtime.cpp"))
        .file(kernels_dir.join("emu/memory.cpp"))
        .file(kernels_dir.join("emu/tensor_core.cpp"));
    let mut tables = Vec::new();
    for src in gpu.iter().chain(tests) {
        let names = kernel_names(&src.path);
        if names.is_empty() {
            continue;
        }
        let stem = &src.stem;
        // One translation unit per .cu file, so file-local functions of
        // different files never collide.
        let mut cpp = format!("#include \"{}\"\n", src.path.display());
        cpp += &format!("extern \"C\" const emu::KernelEntry emu_table_{stem}[] = {{\n");
        for n in &names {
            cpp += &format!("    {{\"{n}\", &emu::trampoline<&{n}>, emu::params_of(&{n})}},\n");
        }
        cpp += "};\n";
        let wrapper = out.join(format!("emu_{stem}.cpp"));
        write_if_changed(&wrapper, cpp.as_bytes());
        build.file(&wrapper);
        tables.push((stem, names.len()));
    }
    let mut reg = String::from("#include \"emu/emu.h\"\n");
    for (stem, _) in &tables {
        reg += &format!("extern \"C\" const emu::KernelEntry emu_table_{stem}[];\n");
    }
    reg += "extern \"C\" const emu::KernelTable emu_kernel_tables[] = {\n";
    for (stem, len) in &tables {
        reg += &format!("    {{emu_table_{stem}, {len}}},\n");
    }
    if tables.is_empty() {
        reg += "    {nullptr, 0},\n";
    }
    reg += "};\n";
    reg += &format!(
        "extern \"C\" const unsigned emu_kernel_table_count = {};\n",
        tables.len()
    );
    let registry = out.join("emu_registry.cpp");
    write_if_changed(&registry, reg.as_bytes());
    build.file(&registry);
    build.compile("dyntie_emu");
}

fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(bytes) {
        fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

// ---- NVRTC -------------------------------------------------------------------

fn find_nvrtc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVRTC_LIB") {
        return Some(PathBuf::from(p));
    }
    let mut dirs = Vec::new();
    if let Some(cuda) = std::env::var_os("CUDA_PATH") {
        dirs.push(PathBuf::from(&cuda).join("lib64"));
        dirs.push(PathBuf::from(&cuda).join("lib"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.push(manifest.join(".cuda-tools/nvidia/cuda_nvrtc/lib"));
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut libs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("libnvrtc.so")
            })
            .collect();
        libs.sort();
        if let Some(lib) = libs.into_iter().next() {
            return Some(lib);
        }
    }
    None
}

fn find_cuda_include(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CUDA_INCLUDE_DIR") {
        return Some(PathBuf::from(p));
    }
    let mut dirs = Vec::new();
    if let Some(cuda) = std::env::var_os("CUDA_PATH") {
        dirs.push(PathBuf::from(cuda).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.push(manifest.join(".cuda-tools/nvidia/cuda_runtime/include"));
    dirs.into_iter().find(|d| d.join("cuda_runtime.h").exists())
}

type Program = *mut c_void;

struct Nvrtc {
    lib: libloading::Library,
}

impl Nvrtc {
    fn load(path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: loading NVRTC runs only its (trusted) initializers.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot load NVRTC from {}: {e}", path.display()))?;
        Ok(Nvrtc { lib })
    }

    fn sym<T>(&self, name: &str) -> libloading::Symbol<'_, T> {
        // SAFETY: the signatures below are NVRTC's documented C API.
        unsafe { self.lib.get(name.as_bytes()) }
            .unwrap_or_else(|e| panic!("NVRTC lacks {name}: {e}"))
    }

    fn version(&self) -> String {
        let f = self.sym::<unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int>("nvrtcVersion");
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-parameters.
        unsafe { f(&mut major, &mut minor) };
        format!("{major}.{minor}")
    }

    /// Compiles `src`; returns PTX (when `cubin` is false) or a cubin, and
    /// the program log (with `--ptxas-options=-v`, ptxas's report).
    fn compile(
        &self,
        src: &str,
        name: &str,
        opts: &[String],
        cubin: bool,
    ) -> Result<(Vec<u8>, String), String> {
        type Create = unsafe extern "C" fn(
            *mut Program,
            *const c_char,
            *const c_char,
            c_int,
            *const *const c_char,
            *const *const c_char,
        ) -> c_int;
        type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
        type Size = unsafe extern "C" fn(Program, *mut usize) -> c_int;
        type Get = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
        type Destroy = unsafe extern "C" fn(*mut Program) -> c_int;
        let csrc = CString::new(src).unwrap();
        let cname = CString::new(name).unwrap();
        let copts: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(o.as_str()).unwrap())
            .collect();
        let opt_ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: NVRTC's C API with valid, NUL-terminated strings; the
        // program is destroyed before returning.
        unsafe {
            let rc = self.sym::<Create>("nvrtcCreateProgram")(
                &mut prog,
                csrc.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            if rc != 0 {
                return Err(format!("nvrtcCreateProgram failed ({rc})"));
            }
            let rc = self.sym::<Compile>("nvrtcCompileProgram")(
                prog,
                opt_ptrs.len() as c_int,
                opt_ptrs.as_ptr(),
            );
            let get_text = |size: &str, get: &str| -> Vec<u8> {
                let mut n = 0usize;
                self.sym::<Size>(size)(prog, &mut n);
                let mut buf = vec![0u8; n];
                self.sym::<Get>(get)(prog, buf.as_mut_ptr() as *mut c_char);
                buf
            };
            let log = get_text("nvrtcGetProgramLogSize", "nvrtcGetProgramLog");
            let log = CStr::from_bytes_until_nul(&log)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let result = if rc != 0 {
                Err(log)
            } else if cubin {
                Ok((get_text("nvrtcGetCUBINSize", "nvrtcGetCUBIN"), log))
            } else {
                let mut ptx = get_text("nvrtcGetPTXSize", "nvrtcGetPTX");
                while ptx.last() == Some(&0) {
                    ptx.pop();
                }
                Ok((ptx, log))
            };
            self.sym::<Destroy>("nvrtcDestroyProgram")(&mut prog);
            result
        }
    }
}

/// Compiles `sources` into the embedded GPU modules and writes the ptxas
/// report of their cubins; `tests` (host-only kernels) are compiled to
/// cubins only for the report, so the emulator checks their launches too.
fn build_gpu(
    manifest: &Path,
    kernels_dir: &Path,
    out: &Path,
    sources: &[Source],
    tests: &[Source],
) {
    let generated = out.join("gpu_kernels.rs");
    let without = |why: String| {
        println!("cargo:warning=dyntie: building without GPU kernels: {why}");
        let rs = format!(
            "pub static GPU_MODULES: &[GpuModule] = &[];\npub const GPU_BUILD: &str = {:?};\n",
            format!("built without GPU kernels: {why}")
        );
        write_if_changed(&generated, rs.as_bytes());
        let status = format!(
            "unavailable ({why}): registers are not checked at launch, static shared memory only \
             as the emulator places it"
        );
        write_ptxas_report(out, &[], &status);
    };
    let Some(lib) = find_nvrtc(manifest) else {
        return without(
            "NVRTC not found (set NVRTC_LIB or CUDA_PATH, or run scripts/install-cuda-tools.sh)"
                .into(),
        );
    };
    let nvrtc = match Nvrtc::load(&lib) {
        Ok(n) => n,
        Err(e) => return without(e),
    };
    let mut base_opts = vec![
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
        format!("-I{}", kernels_dir.join("include").display()),
        format!("-I{}", kernels_dir.display()),
        format!("-I{}", out.display()),
    ];
    if let Some(inc) = find_cuda_include(manifest) {
        base_opts.push(format!("-I{}", inc.display()));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    let ptx_dir = target_dir.join("ptx");
    fs::create_dir_all(&ptx_dir).unwrap_or_else(|e| panic!("creating {}: {e}", ptx_dir.display()));

    // Every (file, target) pair compiles in its own thread: NVRTC is slow
    // and its programs are independent. Files past `sources` are the tests.
    let all: Vec<&Source> = sources.iter().chain(tests).collect();
    let jobs: Vec<(usize, u32, bool)> = (0..all.len())
        .flat_map(|i| {
            let ptx_archs: &[u32] = if i < sources.len() { &PTX_ARCHS } else { &[] };
            let ptx = ptx_archs.iter().map(move |&a| (i, a, false));
            let cubin = CUBIN_ARCHS.iter().map(move |&a| (i, a, true));
            ptx.chain(cubin)
        })
        .collect();
    let results: Vec<Result<(Vec<u8>, String), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(i, arch, cubin)| {
                let src_path = &all[i].path;
                let nvrtc = &nvrtc;
                let mut opts = base_opts.clone();
                let kind = if cubin { "sm" } else { "compute" };
                opts.push(format!("--gpu-architecture={kind}_{arch}"));
                if cubin {
                    // ptxas's report (registers, shared memory) into the log.
                    opts.push("--ptxas-options=-v".to_string());
                }
                s.spawn(move || {
                    let src = fs::read_to_string(src_path).map_err(|e| e.to_string())?;
                    nvrtc.compile(&src, &src_path.display().to_string(), &opts, cubin)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut report = Vec::new();
    for (&(i, arch, cubin), res) in jobs.iter().zip(&results) {
        let src = &all[i].path;
        let (_, log) = res.as_ref().unwrap_or_else(|log| {
            panic!("NVRTC failed on {} for arch {arch}:\n{log}", src.display())
        });
        if !cubin {
            continue;
        }
        let entries = parse_ptxas_report(log);
        for name in kernel_names(src) {
            let Some(e) = entries.iter().find(|e| e.0 == name && e.1 == arch) else {
                panic!(
                    "the ptxas report for {} (sm_{arch}) lacks kernel {name}; NVRTC's log:\n{log}",
                    src.display()
                )
            };
            report.push(e.clone());
        }
    }
    let status = format!(
        "ptxas report of {} kernels for {} (NVRTC {})",
        report.len() / CUBIN_ARCHS.len(),
        CUBIN_ARCHS
            .iter()
            .map(|a| format!("sm_{a}"))
            .collect::<Vec<_>>()
            .join(", "),
        nvrtc.version()
    );
    write_ptxas_report(out, &report, &status);

    let mut rs = String::new();
    let list = |prefix: &str, archs: &[u32]| {
        archs
            .iter()
            .map(|a| format!("{prefix}_{a}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    rs += &format!(
        "pub const GPU_BUILD: &str = \"NVRTC {}: {} PTX, {} cubins\";\n",
        nvrtc.version(),
        list("compute", &PTX_ARCHS),
        list("sm", &CUBIN_ARCHS)
    );
    rs += "pub static GPU_MODULES: &[GpuModule] = &[\n";
    let mut written = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let stem = &src.stem;
        let mut ptx = Vec::new();
        let mut cubins = Vec::new();
        for (&(j, arch, cubin), res) in jobs.iter().zip(&results) {
            if j != i {
                continue;
            }
            let (bytes, _) = res.as_ref().expect("failures reported above");
            let file = if cubin {
                out.join(format!("{stem}.sm_{arch}.cubin"))
            } else {
                let stable = ptx_dir.join(format!("{stem}.compute_{arch}.ptx"));
                write_if_changed(&stable, bytes);
                written.push(stable);
                out.join(format!("{stem}.compute_{arch}.ptx"))
            };
            write_if_changed(&file, bytes);
            if cubin {
                cubins.push(format!(
                    "({arch}, include_bytes!({:?}))",
                    file.display().to_string()
                ));
            } else {
                ptx.push(format!(
                    "({arch}, include_str!({:?}))",
                    file.display().to_string()
                ));
            }
        }
        let kernels: Vec<String> = kernel_names(&src.path)
            .iter()
            .map(|k| format!("{k:?}"))
            .collect();
        rs += &format!(
            "    GpuModule {{ name: {:?}, kernels: &[{}], ptx: &[{}], cubins: &[{}] }},\n",
            src.name,
            kernels.join(", "),
            ptx.join(", "),
            cubins.join(", ")
        );
    }
    rs += "];\n";
    write_if_changed(&generated, rs.as_bytes());
    // PTX of kernel files that no longer exist would still be checked by
    // scripts/ptxas-check.sh.
    for stale in fs::read_dir(&ptx_dir).into_iter().flatten().flatten() {
        let path = stale.path();
        if path.extension().is_some_and(|e| e == "ptx") && !written.contains(&path) {
            let _ = fs::remove_file(path);
        }
    }
}

/// One entry function's line of a ptxas report: (kernel, arch, registers,
/// static shared bytes).
type PtxasLine = (String, u32, u32, u32);

/// Parses the ptxas `-v` report NVRTC leaves in its log when it builds a
/// cubin. Per entry function it prints
///   ptxas info    : Compiling entry function 'gemm_simt_f32' for 'sm_90'
///   ...
///   ptxas info    : Used 64 registers, used 1 barriers, 8320 bytes smem
/// ("bytes smem" is absent when the kernel has no static shared memory).
fn parse_ptxas_report(log: &str) -> Vec<PtxasLine> {
    let mut lines = Vec::new();
    let mut entry: Option<(String, u32)> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            let arch = rest
                .split("for 'sm_")
                .nth(1)
                .and_then(|a| a.trim_end().trim_end_matches('\'').parse().ok());
            entry = arch.map(|a| (name, a));
        } else if let Some(used) = line.split(": Used ").nth(1) {
            let Some((name, arch)) = entry.take() else {
                continue;
            };
            let (mut registers, mut smem) = (None, 0);
            for part in used.split(',') {
                match part.split_whitespace().collect::<Vec<_>>()[..] {
                    [n, "registers"] => registers = n.parse().ok(),
                    [n, "bytes", "smem"] => smem = n.parse().unwrap_or(0),
                    _ => {}
                }
            }
            if let Some(r) = registers {
                lines.push((name, arch, r, smem));
            }
        }
    }
    lines
}

/// The report as Rust (src/cuda/limits.rs includes it).
fn write_ptxas_report(out: &Path, report: &[PtxasLine], status: &str) {
    let mut rs = String::from("pub static PTXAS_REPORT: &[PtxasEntry] = &[\n");
    for (kernel, arch, registers, smem) in report {
        rs += &format!(
            "    PtxasEntry {{ kernel: {kernel:?}, arch: {arch}, resources: KernelResources {{ \
             registers: {registers}, static_shared: {smem} }} }},\n"
        );
    }
    rs += "];\n";
    rs += &format!("pub const PTXAS_REPORT_STATUS: &str = {status:?};\n");
    write_if_changed(&out.join("ptxas_report.rs"), rs.as_bytes());
}
