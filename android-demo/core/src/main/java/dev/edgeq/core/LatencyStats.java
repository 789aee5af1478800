package dev.edgeq.core;

import java.util.Arrays;

/** min / p50 / p90 / max / mean / stdev of latency samples, as {@code edgeq profile} computes them. */
public final class LatencyStats {
  public final double min, p50, p90, max, mean, stdev;

  private LatencyStats(double min, double p50, double p90, double max, double mean, double stdev) {
    this.min = min;
    this.p50 = p50;
    this.p90 = p90;
    this.max = max;
    this.mean = mean;
    this.stdev = stdev;
  }

  public static LatencyStats of(double[] samplesMs) {
    if (samplesMs.length == 0) throw new IllegalArgumentException("no samples");
    double[] xs = samplesMs.clone();
    Arrays.sort(xs);
    double sum = 0;
    for (double x : xs) sum += x;
    double mean = sum / xs.length;
    double var = 0;
    for (double x : xs) var += (x - mean) * (x - mean);
    double stdev = xs.length > 1 ? Math.sqrt(var / (xs.length - 1)) : 0.0; // sample stdev, as statistics.stdev
    return new LatencyStats(xs[0], percentile(xs, 0.5), percentile(xs, 0.9), xs[xs.length - 1], mean, stdev);
  }

  /** Linear interpolation between closest ranks (numpy's default). */
  public static double percentile(double[] sorted, double q) {
    double pos = (sorted.length - 1) * q;
    int lo = (int) pos;
    int hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }
}
