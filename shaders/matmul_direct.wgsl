// Register-blocked matmul without workgroup memory: each invocation computes TM x TN elements of
// C = alpha * op(A) op(B) (+ C), reading operands straight from storage (through the caches).
// A workgroup covers (WY*TM) x (WX*TN); an invocation's columns are interleaved WX apart, so
// neighbouring invocations read neighbouring addresses of row-major B (and share A's rows).
// No barriers, which suits adapters where barriers are expensive (CPU rasterizers such as
// lavapipe); GPUs with fast workgroup memory use matmul.wgsl.
// Generated constants: WX, WY (workgroup size), TM, TN, A_TRANS, B_TRANS.

struct Params {
    m: u32, n: u32, k: u32, lda: u32,
    ldb: u32, ldc: u32, a_off: u32, b_off: u32,
    c_off: u32, accumulate: u32, alpha: f32, pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WX, WY)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * WY * TM + lid.y;
    let col0 = wid.x * WX * TN + lid.x;
    if (row0 >= p.m || col0 >= p.n) { return; }
    // Clamp indices so loads stay in bounds; out-of-range results are never stored.
    var rows: array<u32, TM>;
    var cols: array<u32, TN>;
    for (var i = 0u; i < TM; i++) { rows[i] = min(row0 + i * WY, p.m - 1u); }
    for (var j = 0u; j < TN; j++) { cols[j] = min(col0 + j * WX, p.n - 1u); }
    var acc: array<f32, TM * TN>;
    var ar: array<f32, TM>;
    var br: array<f32, TN>;
    for (var kk = 0u; kk < p.k; kk++) {
        for (var i = 0u; i < TM; i++) {
            if (A_TRANS) { ar[i] = a[p.a_off + kk * p.lda + rows[i]]; } else { ar[i] = a[p.a_off + rows[i] * p.lda + kk]; }
        }
        for (var j = 0u; j < TN; j++) {
            if (B_TRANS) { br[j] = b[p.b_off + cols[j] * p.ldb + kk]; } else { br[j] = b[p.b_off + kk * p.ldb + cols[j]]; }
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) {
                acc[i * TN + j] = fma(ar[i], br[j], acc[i * TN + j]);
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + i * WY;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + j * WX;
            if (col >= p.n) { continue; }
            let idx = p.c_off + row * p.ldc + col;
            var val = p.alpha * acc[i * TN + j];
            if (p.accumulate != 0u) { val += c[idx]; }
            c[idx] = val;
        }
    }
}
