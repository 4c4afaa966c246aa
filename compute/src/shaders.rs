//! The WGSL sources of `shaders/`, embedded at build time, and the generated constants
//! (tile sizes, head width, layouts) prepended to each before compilation.

/// `shaders/common.wgsl`, prepended to every kernel.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Every kernel file, by name (the file name without `.wgsl`).
pub const KERNELS: &[(&str, &str)] = &[
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    (
        "matmul_direct",
        include_str!("../../shaders/matmul_direct.wgsl"),
    ),
    (
        "matmul_vec4",
        include_str!("../../shaders/matmul_vec4.wgsl"),
    ),
    (
        "rmsnorm_forward",
        include_str!("../../shaders/rmsnorm_forward.wgsl"),
    ),
    (
        "rmsnorm_backward",
        include_str!("../../shaders/rmsnorm_backward.wgsl"),
    ),
    (
        "rmsnorm_weight_grad",
        include_str!("../../shaders/rmsnorm_weight_grad.wgsl"),
    ),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    (
        "attention_forward",
        include_str!("../../shaders/attention_forward.wgsl"),
    ),
    (
        "attention_cached",
        include_str!("../../shaders/attention_cached.wgsl"),
    ),
    (
        "attention_delta",
        include_str!("../../shaders/attention_delta.wgsl"),
    ),
    (
        "attention_backward_dq",
        include_str!("../../shaders/attention_backward_dq.wgsl"),
    ),
    (
        "attention_backward_dkv",
        include_str!("../../shaders/attention_backward_dkv.wgsl"),
    ),
    (
        "swiglu_forward",
        include_str!("../../shaders/swiglu_forward.wgsl"),
    ),
    (
        "swiglu_backward",
        include_str!("../../shaders/swiglu_backward.wgsl"),
    ),
    (
        "embedding_forward",
        include_str!("../../shaders/embedding_forward.wgsl"),
    ),
    (
        "embedding_backward",
        include_str!("../../shaders/embedding_backward.wgsl"),
    ),
    (
        "cross_entropy_stats",
        include_str!("../../shaders/cross_entropy_stats.wgsl"),
    ),
    (
        "cross_entropy_backward",
        include_str!("../../shaders/cross_entropy_backward.wgsl"),
    ),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    (
        "sum_squares",
        include_str!("../../shaders/sum_squares.wgsl"),
    ),
    ("scale", include_str!("../../shaders/scale.wgsl")),
    ("add", include_str!("../../shaders/add.wgsl")),
];

/// A generated WGSL constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Const {
    /// `const NAME: u32 = v;`
    U32(&'static str, u32),
    /// `const NAME: bool = v;`
    Bool(&'static str, bool),
}

/// The full source of kernel `name` with `consts` prepended, or `None` for an unknown name.
pub fn source(name: &str, consts: &[Const]) -> Option<String> {
    let body = KERNELS.iter().find(|(n, _)| *n == name)?.1;
    let mut s = String::new();
    for c in consts {
        match c {
            Const::U32(n, v) => s.push_str(&format!("const {n}: u32 = {v}u;\n")),
            Const::Bool(n, v) => s.push_str(&format!("const {n}: bool = {v};\n")),
        }
    }
    s.push_str(COMMON);
    s.push_str(body);
    Some(s)
}

/// Constants a kernel needs, with values that work under the default WebGPU limits; used to
/// validate every file on its own.
pub fn example_constants(name: &str) -> Vec<Const> {
    match name {
        "matmul" => vec![
            Const::U32("BM", 64),
            Const::U32("BN", 64),
            Const::U32("BK", 8),
            Const::U32("TM", 4),
            Const::U32("TN", 4),
            Const::Bool("A_TRANS", false),
            Const::Bool("B_TRANS", true),
        ],
        "matmul_vec4" => vec![
            Const::U32("WX", 8),
            Const::U32("WY", 8),
            Const::Bool("A_TRANS", false),
            Const::Bool("B_TRANS", true),
        ],
        "matmul_direct" => vec![
            Const::U32("WX", 8),
            Const::U32("WY", 8),
            Const::U32("TM", 4),
            Const::U32("TN", 4),
            Const::Bool("A_TRANS", true),
            Const::Bool("B_TRANS", false),
        ],
        "attention_forward" | "attention_backward_dq" | "attention_backward_dkv" => {
            vec![
                Const::U32("HD", 128),
                Const::U32("BQ", 16),
                Const::U32("BKV", 8),
            ]
        }
        "attention_cached" => vec![
            Const::U32("HD", 128),
            Const::U32("WG", 64),
            Const::U32("ACC", 2),
        ],
        "sum_squares" => vec![Const::U32("WG", 256), Const::U32("ITEMS", 8)],
        _ => vec![Const::U32("WG", 256)],
    }
}
