// Tiled, register-blocked matmul in three layouts: C = alpha * op(A) op(B) (+ C).
// Generated constants: BM, BN, BK (workgroup tile), TM, TN (per-invocation block),
// A_TRANS (A stored [k, m]), B_TRANS (B stored [n, k]).
// NT (A [m,k], B [n,k]) is a linear layer, NN a data gradient, TN a weight gradient.

struct Params {
    m: u32, n: u32, k: u32, lda: u32,
    ldb: u32, ldc: u32, a_off: u32, b_off: u32,
    c_off: u32, accumulate: u32, alpha: f32, pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const THREADS_M: u32 = BM / TM;
const THREADS_N: u32 = BN / TN;
const THREADS: u32 = THREADS_M * THREADS_N;

var<workgroup> a_tile: array<f32, BK * BM>; // [kk][mm]
var<workgroup> b_tile: array<f32, BK * BN>; // [kk][nn]

fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) { return 0.0; }
    if (A_TRANS) { return a[p.a_off + kk * p.lda + row]; }
    return a[p.a_off + row * p.lda + kk];
}

fn load_b(kk: u32, col: u32) -> f32 {
    if (col >= p.n || kk >= p.k) { return 0.0; }
    if (B_TRANS) { return b[p.b_off + col * p.ldb + kk]; }
    return b[p.b_off + kk * p.ldb + col];
}

@compute @workgroup_size(THREADS_N, THREADS_M)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    var acc: array<f32, TM * TN>;
    var ar: array<f32, TM>;
    var br: array<f32, TN>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Cooperative loads; consecutive invocations read consecutive addresses.
        for (var i = li; i < BM * BK; i += THREADS) {
            var mm: u32; var kk: u32;
            if (A_TRANS) { mm = i % BM; kk = i / BM; } else { kk = i % BK; mm = i / BK; }
            a_tile[kk * BM + mm] = load_a(row0 + mm, k0 + kk);
        }
        for (var i = li; i < BN * BK; i += THREADS) {
            var nn: u32; var kk: u32;
            if (B_TRANS) { kk = i % BK; nn = i / BK; } else { nn = i % BN; kk = i / BN; }
            b_tile[kk * BN + nn] = load_b(k0 + kk, col0 + nn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < TM; i++) { ar[i] = a_tile[kk * BM + lid.y * TM + i]; }
            for (var j = 0u; j < TN; j++) { br[j] = b_tile[kk * BN + lid.x * TN + j]; }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(ar[i], br[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + lid.y * TM + i;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + lid.x * TN + j;
            if (col >= p.n) { continue; }
            let idx = p.c_off + row * p.ldc + col;
            var val = p.alpha * acc[i * TN + j];
            if (p.accumulate != 0u) { val += c[idx]; }
            c[idx] = val;
        }
    }
}
