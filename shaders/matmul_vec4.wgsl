// Register-blocked matmul on 4-wide vectors, without workgroup memory or barriers: each
// invocation computes a 4 x 4 block of C = alpha * op(A) op(B) (+ C). Operands are read as vec4
// along their contiguous dimension, which the host guarantees is a multiple of 4 (with aligned
// strides and offsets, in vec4 units below); other shapes use matmul_direct.wgsl.
// NT reduces 4 k at a time with vec-times-matrix, NN with matrix-times-vec, TN with outer
// products, so every load is a whole vec4.
// Generated constants: WX, WY (workgroup size), A_TRANS, B_TRANS.

struct Params {
    m: u32, n: u32, k: u32, lda4: u32,
    ldb4: u32, ldc: u32, a_off4: u32, b_off4: u32,
    c_off: u32, accumulate: u32, alpha: f32, pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WX, WY)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * 4u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) { return; }
    var acc: array<vec4<f32>, 4>; // acc[i] = C[row0 + i, col0..col0 + 4]
    if (!A_TRANS && B_TRANS) {
        // NT: A [m, k] and B [n, k], both read along k.
        var ra: array<u32, 4>;
        var rb: array<u32, 4>;
        for (var i = 0u; i < 4u; i++) {
            ra[i] = p.a_off4 + min(row0 + i, p.m - 1u) * p.lda4;
            rb[i] = p.b_off4 + min(col0 + i, p.n - 1u) * p.ldb4;
        }
        for (var k4 = 0u; k4 < p.k / 4u; k4++) {
            let bm = mat4x4<f32>(b[rb[0] + k4], b[rb[1] + k4], b[rb[2] + k4], b[rb[3] + k4]);
            for (var i = 0u; i < 4u; i++) { acc[i] += a[ra[i] + k4] * bm; }
        }
    } else if (!A_TRANS && !B_TRANS) {
        // NN: A [m, k] read along k, B [k, n] read along n.
        var ra: array<u32, 4>;
        for (var i = 0u; i < 4u; i++) { ra[i] = p.a_off4 + min(row0 + i, p.m - 1u) * p.lda4; }
        let cb = p.b_off4 + gid.x;
        for (var k4 = 0u; k4 < p.k / 4u; k4++) {
            let kb = cb + k4 * 4u * p.ldb4;
            let bm = mat4x4<f32>(b[kb], b[kb + p.ldb4], b[kb + 2u * p.ldb4], b[kb + 3u * p.ldb4]);
            for (var i = 0u; i < 4u; i++) { acc[i] += bm * a[ra[i] + k4]; }
        }
    } else {
        // TN: A [k, m] read along m, B [k, n] read along n: outer products.
        let ca = p.a_off4 + gid.y;
        let cb = p.b_off4 + gid.x;
        for (var kk = 0u; kk < p.k; kk++) {
            let av = a[ca + kk * p.lda4];
            let bv = b[cb + kk * p.ldb4];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col >= p.n) { continue; }
            let idx = p.c_off + row * p.ldc + col;
            var val = p.alpha * acc[i][j];
            if (p.accumulate != 0u) { val += c[idx]; }
            c[idx] = val;
        }
    }
}
