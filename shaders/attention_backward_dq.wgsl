// Attention backward to the queries: one invocation per (query, head), keys streamed in tiles;
// probabilities recomputed from lse: dq = scale * sum_j p_ij (dO_i . v_j - delta_i) k_j.
// Generated constants: HD, BQ, BKV. Grid: (ceil(seq / BQ), heads, sequences).

struct Params { seq: u32, heads: u32, kv_heads: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> d_o: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dq: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

var<workgroup> k_tile: array<f32, BKV * HD>;
var<workgroup> v_tile: array<f32, BKV * HD>;

@compute @workgroup_size(BQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.y;
    let s = wid.z;
    let kh = h / (p.heads / p.kv_heads);
    let q_stride = p.heads * HD;
    let kv_stride = p.kv_heads * HD;
    let t = wid.x * BQ + li;
    let valid = t < p.seq;
    let row = s * p.seq + min(t, p.seq - 1u);
    var qr: array<f32, HD>;
    var dor: array<f32, HD>;
    var acc: array<f32, HD>;
    for (var c = 0u; c < HD; c++) {
        qr[c] = q[row * q_stride + h * HD + c] * p.scale;
        dor[c] = d_o[row * q_stride + h * HD + c];
        acc[c] = 0.0;
    }
    let l = lse[row * p.heads + h];
    let dl = delta[row * p.heads + h];
    let kend = min(p.seq, wid.x * BQ + BQ);
    for (var kb = 0u; kb < kend; kb += BKV) {
        for (var i = li; i < BKV * HD; i += BQ) {
            let r = kb + i / HD;
            var kv = 0.0;
            var vv = 0.0;
            if (r < p.seq) {
                let off = (s * p.seq + r) * kv_stride + kh * HD + i % HD;
                kv = k[off];
                vv = v[off];
            }
            k_tile[i] = kv;
            v_tile[i] = vv;
        }
        workgroupBarrier();
        if (valid && kb <= t) {
            let jn = min(BKV, t + 1u - kb);
            for (var j = 0u; j < jn; j++) {
                var d = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < HD; c++) {
                    d = fma(qr[c], k_tile[j * HD + c], d);
                    dp = fma(dor[c], v_tile[j * HD + c], dp);
                }
                let ds = exp(d - l) * (dp - dl);
                for (var c = 0u; c < HD; c++) { acc[c] = fma(ds, k_tile[j * HD + c], acc[c]); }
            }
        }
        workgroupBarrier();
    }
    if (valid) {
        for (var c = 0u; c < HD; c++) { dq[row * q_stride + h * HD + c] = acc[c] * p.scale; }
    }
}
