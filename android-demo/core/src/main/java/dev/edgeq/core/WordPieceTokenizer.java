package dev.edgeq.core;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * BERT's WordPiece tokenizer, as Hugging Face's {@code tokenizers} runs it for MiniLM-style
 * models: BertNormalizer (clean text, pad CJK characters, strip accents, lowercase),
 * BertPreTokenizer (split on whitespace and punctuation), greedy longest-match WordPiece,
 * then {@code [CLS] ... [SEP]}, truncation and padding to a fixed length.
 */
public final class WordPieceTokenizer {
  private final Map<String, Integer> vocab;
  private final Bundle.TokenizerConfig config;
  private final int unkId;

  public WordPieceTokenizer(Map<String, Integer> vocab, Bundle.TokenizerConfig config) {
    this.vocab = vocab;
    this.config = config;
    Integer unk = config.unkId != null ? config.unkId : vocab.get("[UNK]");
    if (unk == null) throw new IllegalArgumentException("the vocabulary has no [UNK] token");
    this.unkId = unk;
  }

  /** Reads {@code vocab.txt} (one token a line; the line number is the id). */
  public static Map<String, Integer> readVocab(File vocabTxt) throws IOException {
    Map<String, Integer> vocab = new HashMap<>();
    try (BufferedReader r = Files.newBufferedReader(vocabTxt.toPath(), StandardCharsets.UTF_8)) {
      String line;
      int id = 0;
      while ((line = r.readLine()) != null) {
        vocab.putIfAbsent(line, id++);
      }
    }
    return vocab;
  }

  /** Token ids and attention mask, {@code maxLength} long (padded with the pad id). */
  public static final class Encoding {
    public final long[] inputIds;
    public final long[] attentionMask;

    Encoding(long[] inputIds, long[] attentionMask) {
      this.inputIds = inputIds;
      this.attentionMask = attentionMask;
    }
  }

  public Encoding encode(String text, int maxLength) {
    List<Integer> pieces = tokenize(text);
    int keep = Math.min(pieces.size(), Math.max(0, maxLength - 2));
    long[] ids = new long[maxLength];
    long[] mask = new long[maxLength];
    int n = 0;
    ids[n] = config.clsId;
    mask[n++] = 1;
    for (int i = 0; i < keep; i++) {
      ids[n] = pieces.get(i);
      mask[n++] = 1;
    }
    ids[n] = config.sepId;
    mask[n++] = 1;
    for (; n < maxLength; n++) ids[n] = config.padId;
    return new Encoding(ids, mask);
  }

  /** Word-piece ids of {@code text}, without special tokens. */
  public List<Integer> tokenize(String text) {
    List<Integer> out = new ArrayList<>();
    for (String word : preTokenize(normalize(text))) {
      wordPiece(word, out);
    }
    return out;
  }

  String normalize(String text) {
    StringBuilder sb = new StringBuilder();
    text.codePoints().forEach(cp -> {
      if (config.cleanText) {
        if (cp == 0 || cp == 0xFFFD || isControl(cp)) return;
        if (isWhitespace(cp)) {
          sb.append(' ');
          return;
        }
      }
      if (config.handleChineseChars && isChinese(cp)) {
        sb.append(' ').appendCodePoint(cp).append(' ');
      } else {
        sb.appendCodePoint(cp);
      }
    });
    String s = sb.toString();
    if (config.stripAccents) {
      StringBuilder stripped = new StringBuilder();
      Normalizer.normalize(s, Normalizer.Form.NFD).codePoints()
          .filter(cp -> Character.getType(cp) != Character.NON_SPACING_MARK)
          .forEach(stripped::appendCodePoint);
      s = stripped.toString();
    }
    if (config.lowercase) {
      StringBuilder lower = new StringBuilder();
      // per character, as tokenizers does (no final-sigma context); U+0130 lowercases to two chars
      s.codePoints().forEach(cp -> {
        if (cp == 0x130) lower.append("i\u0307");
        else lower.appendCodePoint(Character.toLowerCase(cp));
      });
      s = lower.toString();
    }
    return s;
  }

  static List<String> preTokenize(String s) {
    List<String> words = new ArrayList<>();
    StringBuilder cur = new StringBuilder();
    s.codePoints().forEach(cp -> {
      if (isWhitespace(cp)) {
        flush(cur, words);
      } else if (isPunctuation(cp)) {
        flush(cur, words);
        words.add(new String(Character.toChars(cp)));
      } else {
        cur.appendCodePoint(cp);
      }
    });
    flush(cur, words);
    return words;
  }

  private static void flush(StringBuilder cur, List<String> words) {
    if (cur.length() > 0) {
      words.add(cur.toString());
      cur.setLength(0);
    }
  }

  private void wordPiece(String word, List<Integer> out) {
    int[] cps = word.codePoints().toArray();
    if (cps.length > config.maxInputCharsPerWord) {
      out.add(unkId);
      return;
    }
    List<Integer> pieces = new ArrayList<>();
    int start = 0;
    while (start < cps.length) {
      int end = cps.length;
      Integer found = null;
      while (start < end) {
        String sub = new String(cps, start, end - start);
        if (start > 0) sub = config.continuingSubwordPrefix + sub;
        found = vocab.get(sub);
        if (found != null) break;
        end--;
      }
      if (found == null) {
        out.add(unkId);
        return;
      }
      pieces.add(found);
      start = end;
    }
    out.addAll(pieces);
  }

  /** Unicode White_Space (what Rust's char::is_whitespace tests). */
  static boolean isWhitespace(int cp) {
    switch (cp) {
      case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
      case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return true;
      default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
  }

  /** Other (C*) categories, but tab, newline and carriage return (they are whitespace). */
  static boolean isControl(int cp) {
    if (cp == '\t' || cp == '\n' || cp == '\r') return false;
    int t = Character.getType(cp);
    return t == Character.CONTROL || t == Character.FORMAT || t == Character.SURROGATE
        || t == Character.PRIVATE_USE || t == Character.UNASSIGNED;
  }

  static boolean isPunctuation(int cp) {
    if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) {
      return true;
    }
    switch (Character.getType(cp)) {
      case Character.CONNECTOR_PUNCTUATION: case Character.DASH_PUNCTUATION: case Character.START_PUNCTUATION:
      case Character.END_PUNCTUATION: case Character.INITIAL_QUOTE_PUNCTUATION:
      case Character.FINAL_QUOTE_PUNCTUATION: case Character.OTHER_PUNCTUATION:
        return true;
      default:
        return false;
    }
  }

  static boolean isChinese(int cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF)
        || (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF)
        || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
  }
}
