package dev.edgeq.core;

/** A bundle that is unreadable, incomplete, tampered with, or of an unknown schema. */
public final class BundleException extends Exception {
  private static final long serialVersionUID = 1L;

  public BundleException(String message) {
    super(message);
  }
}
