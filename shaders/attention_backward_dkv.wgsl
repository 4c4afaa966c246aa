// Attention backward to keys and values: one invocation per (key, kv head), summing over the
// query heads of its group and the queries at or after it, streamed in tiles of BQ:
// dv_j = sum_i p_ij dO_i,  dk_j = scale * sum_i p_ij (dO_i . v_j - delta_i) q_i.
// Generated constants: HD, BKV (keys per workgroup), BQ (queries per tile).
// Grid: (ceil(seq / BKV), kv heads, sequences).

struct Params { seq: u32, heads: u32, kv_heads: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> d_o: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dk: array<f32>;
@group(0) @binding(7) var<storage, read_write> dv: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

var<workgroup> q_tile: array<f32, BQ * HD>;
var<workgroup> do_tile: array<f32, BQ * HD>;
var<workgroup> l_tile: array<f32, BQ>;
var<workgroup> d_tile: array<f32, BQ>;

@compute @workgroup_size(BKV)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let kh = wid.y;
    let s = wid.z;
    let group = p.heads / p.kv_heads;
    let q_stride = p.heads * HD;
    let kv_stride = p.kv_heads * HD;
    let j = wid.x * BKV + li;
    let valid = j < p.seq;
    let krow = s * p.seq + min(j, p.seq - 1u);
    var kr: array<f32, HD>;
    var vr: array<f32, HD>;
    var dk_acc: array<f32, HD>;
    var dv_acc: array<f32, HD>;
    for (var c = 0u; c < HD; c++) {
        kr[c] = k[krow * kv_stride + kh * HD + c] * p.scale;
        vr[c] = v[krow * kv_stride + kh * HD + c];
        dk_acc[c] = 0.0;
        dv_acc[c] = 0.0;
    }
    for (var g = 0u; g < group; g++) {
        let h = kh * group + g;
        for (var qb = wid.x * BKV; qb < p.seq; qb += BQ) {
            for (var i = li; i < BQ * HD; i += BKV) {
                let r = qb + i / HD;
                var qv = 0.0;
                var dov = 0.0;
                if (r < p.seq) {
                    let off = (s * p.seq + r) * q_stride + h * HD + i % HD;
                    qv = q[off];
                    dov = d_o[off];
                }
                q_tile[i] = qv;
                do_tile[i] = dov;
            }
            for (var i = li; i < BQ; i += BKV) {
                let r = qb + i;
                var lv = 0.0;
                var dl = 0.0;
                if (r < p.seq) {
                    lv = lse[(s * p.seq + r) * p.heads + h];
                    dl = delta[(s * p.seq + r) * p.heads + h];
                }
                l_tile[i] = lv;
                d_tile[i] = dl;
            }
            workgroupBarrier();
            if (valid) {
                let iend = min(BQ, p.seq - qb);
                for (var i = 0u; i < iend; i++) {
                    if (qb + i < j) { continue; }
                    var d = 0.0;
                    var dp = 0.0;
                    for (var c = 0u; c < HD; c++) {
                        d = fma(q_tile[i * HD + c], kr[c], d);
                        dp = fma(do_tile[i * HD + c], vr[c], dp);
                    }
                    let pij = exp(d - l_tile[i]);
                    let ds = pij * (dp - d_tile[i]);
                    for (var c = 0u; c < HD; c++) {
                        dv_acc[c] = fma(pij, do_tile[i * HD + c], dv_acc[c]);
                        dk_acc[c] = fma(ds, q_tile[i * HD + c], dk_acc[c]);
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (valid) {
        for (var c = 0u; c < HD; c++) {
            dk[krow * kv_stride + kh * HD + c] = dk_acc[c] * p.scale;
            dv[krow * kv_stride + kh * HD + c] = dv_acc[c];
        }
    }
}
