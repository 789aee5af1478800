package dev.edgeq.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Byte-level BPE (GPT-2 / RoBERTa style), as Hugging Face's {@code tokenizers} runs a
 * {@code tokenizer.json} with a ByteLevel pre-tokenizer and a BPE model: split with
 * GPT-2's pattern, map each UTF-8 byte to its printable stand-in, then apply merges in rank
 * order. Special tokens and post-processing templates are not handled here.
 */
public final class BpeTokenizer {
  private static final Pattern GPT2 = Pattern.compile(
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      Pattern.UNICODE_CHARACTER_CLASS);
  private static final String[] BYTE_TO_CHAR = byteToChar();

  private final Map<String, Integer> vocab;
  private final Map<String, Integer> ranks = new HashMap<>(); // "left right" -> merge rank
  private final boolean addPrefixSpace;
  private final Map<String, List<Integer>> cache = new HashMap<>();

  public BpeTokenizer(Map<String, Integer> vocab, List<String[]> merges, boolean addPrefixSpace) {
    this.vocab = vocab;
    for (int i = 0; i < merges.size(); i++) ranks.putIfAbsent(merges.get(i)[0] + " " + merges.get(i)[1], i);
    this.addPrefixSpace = addPrefixSpace;
  }

  /** Reads the BPE model and ByteLevel pre-tokenizer settings of a {@code tokenizer.json}. */
  public static BpeTokenizer fromTokenizerJson(File file) throws IOException, JSONException {
    JSONObject root = new JSONObject(new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8));
    JSONObject model = root.getJSONObject("model");
    if (!"BPE".equals(model.getString("type"))) throw new IllegalArgumentException(file + " is not a BPE tokenizer");
    Map<String, Integer> vocab = new HashMap<>();
    JSONObject v = model.getJSONObject("vocab");
    for (java.util.Iterator<String> it = v.keys(); it.hasNext(); ) {
      String k = it.next();
      vocab.put(k, v.getInt(k));
    }
    List<String[]> merges = new ArrayList<>();
    JSONArray m = model.getJSONArray("merges");
    for (int i = 0; i < m.length(); i++) {
      Object item = m.get(i);
      if (item instanceof JSONArray) {
        merges.add(new String[] {((JSONArray) item).getString(0), ((JSONArray) item).getString(1)});
      } else {
        String s = m.getString(i); // older files: "left right"
        int sp = s.indexOf(' ', 1);
        merges.add(new String[] {s.substring(0, sp), s.substring(sp + 1)});
      }
    }
    JSONObject pre = root.optJSONObject("pre_tokenizer");
    boolean prefix = pre != null && pre.optBoolean("add_prefix_space", false);
    return new BpeTokenizer(vocab, merges, prefix);
  }

  /** Token ids of {@code text} (no special tokens). */
  public List<Integer> encode(String text) {
    if (addPrefixSpace && !text.startsWith(" ")) text = " " + text;
    List<Integer> out = new ArrayList<>();
    Matcher matcher = GPT2.matcher(text);
    while (matcher.find()) {
      StringBuilder mapped = new StringBuilder();
      for (byte b : matcher.group().getBytes(StandardCharsets.UTF_8)) mapped.append(BYTE_TO_CHAR[b & 0xFF]);
      out.addAll(cache.computeIfAbsent(mapped.toString(), this::bpe));
    }
    return out;
  }

  private List<Integer> bpe(String word) {
    List<String> symbols = new ArrayList<>();
    word.codePoints().forEach(cp -> symbols.add(new String(Character.toChars(cp))));
    while (symbols.size() > 1) {
      int best = Integer.MAX_VALUE;
      int at = -1;
      for (int i = 0; i + 1 < symbols.size(); i++) {
        Integer r = ranks.get(symbols.get(i) + " " + symbols.get(i + 1));
        if (r != null && r < best) {
          best = r;
          at = i;
        }
      }
      if (at < 0) break;
      String left = symbols.get(at), right = symbols.get(at + 1);
      List<String> merged = new ArrayList<>(symbols.size());
      for (int i = 0; i < symbols.size(); i++) {
        if (i + 1 < symbols.size() && symbols.get(i).equals(left) && symbols.get(i + 1).equals(right)) {
          merged.add(left + right);
          i++;
        } else {
          merged.add(symbols.get(i));
        }
      }
      symbols.clear();
      symbols.addAll(merged);
    }
    List<Integer> ids = new ArrayList<>(symbols.size());
    for (String s : symbols) {
      Integer id = vocab.get(s);
      if (id == null) throw new IllegalStateException("symbol '" + s + "' is not in the vocabulary");
      ids.add(id);
    }
    return ids;
  }

  /** GPT-2's reversible map from bytes to printable characters. */
  private static String[] byteToChar() {
    String[] table = new String[256];
    int next = 0;
    for (int b = 0; b < 256; b++) {
      boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      table[b] = new String(Character.toChars(printable ? b : 256 + next++));
    }
    return table;
  }
}
