package dev.edgeq.core;

/**
 * Post-processing and comparison of model outputs: mean pooling over the attention mask,
 * L2 normalisation (sentence-transformers' Pooling + Normalize), cosine similarity and the
 * golden check against a bundle's expected output.
 */
public final class Vectors {
  private Vectors() {}

  /** Mean of {@code hidden[t]} over tokens whose mask is 1; {@code hidden} is [tokens * dim]. */
  public static float[] meanPool(float[] hidden, long[] mask, int dim) {
    int tokens = hidden.length / dim;
    if (tokens * dim != hidden.length || mask.length != tokens) {
      throw new IllegalArgumentException("hidden has " + hidden.length + " values, not " + mask.length + " x " + dim);
    }
    double[] sum = new double[dim];
    double count = 0;
    for (int t = 0; t < tokens; t++) {
      if (mask[t] == 0) continue;
      count += 1;
      for (int d = 0; d < dim; d++) sum[d] += hidden[t * dim + d];
    }
    float[] out = new float[dim];
    double denom = Math.max(count, 1e-9); // as sentence-transformers: clamp, never divide by 0
    for (int d = 0; d < dim; d++) out[d] = (float) (sum[d] / denom);
    return out;
  }

  /** {@code v / max(||v||, 1e-12)}, as torch.nn.functional.normalize. */
  public static float[] l2Normalize(float[] v) {
    double norm = 0;
    for (float x : v) norm += (double) x * x;
    norm = Math.max(Math.sqrt(norm), 1e-12);
    float[] out = new float[v.length];
    for (int i = 0; i < v.length; i++) out[i] = (float) (v[i] / norm);
    return out;
  }

  public static double cosine(float[] a, float[] b) {
    if (a.length != b.length) throw new IllegalArgumentException("lengths differ: " + a.length + " vs " + b.length);
    double dot = 0, na = 0, nb = 0;
    for (int i = 0; i < a.length; i++) {
      dot += (double) a[i] * b[i];
      na += (double) a[i] * a[i];
      nb += (double) b[i] * b[i];
    }
    if (na == 0 || nb == 0) return na == nb ? 1.0 : 0.0;
    return dot / Math.sqrt(na * nb);
  }

  public static double maxAbsDiff(float[] a, float[] b) {
    if (a.length != b.length) throw new IllegalArgumentException("lengths differ: " + a.length + " vs " + b.length);
    double m = 0;
    for (int i = 0; i < a.length; i++) m = Math.max(m, Math.abs((double) a[i] - b[i]));
    return m;
  }

  /** The outcome of comparing a runtime's output with the bundle's golden output. */
  public static final class GoldenResult {
    public final boolean ok;
    public final double maxAbsDiff;
    public final double cosine;
    public final double toleranceMaxAbs;
    public final double toleranceMinCosine;

    GoldenResult(double maxAbsDiff, double cosine, double tolMaxAbs, double tolMinCosine) {
      this.maxAbsDiff = maxAbsDiff;
      this.cosine = cosine;
      this.toleranceMaxAbs = tolMaxAbs;
      this.toleranceMinCosine = tolMinCosine;
      this.ok = maxAbsDiff <= tolMaxAbs && cosine >= tolMinCosine;
    }
  }

  public static GoldenResult checkGolden(float[] actual, float[] expected, double tolMaxAbs, double tolMinCosine) {
    if (actual.length != expected.length) return new GoldenResult(Double.POSITIVE_INFINITY, 0, tolMaxAbs, tolMinCosine);
    return new GoldenResult(maxAbsDiff(actual, expected), cosine(actual, expected), tolMaxAbs, tolMinCosine);
  }
}
