// digitnet page: pointer drawing → PNG → POST /v1/predict (a digit: digit, bars, model view) or
// POST /v1/read (a number: the digits, a box over each on the pad, what the model saw for each).
// The canvas is sent as an image, so it goes through the same preprocessing as an uploaded photo.
"use strict";

(() => {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const seen = document.getElementById("seen");
  const seenCtx = seen.getContext("2d");
  const result = document.getElementById("result");
  const digitEl = document.getElementById("digit");
  const confEl = document.getElementById("confidence");
  const unsureEl = document.getElementById("unsure");
  const barsEl = document.getElementById("bars");
  const statusEl = document.getElementById("status");
  const hintEl = document.getElementById("hint");
  const uploadEl = document.getElementById("upload");
  const layout = document.getElementById("layout");
  const titleEl = document.getElementById("draw-title");
  const boxes = document.getElementById("boxes");
  const boxesCtx = boxes.getContext("2d");
  const reading = document.getElementById("reading");
  const numberEl = document.getElementById("number");
  const readingConfEl = document.getElementById("reading-confidence");
  const readingUnsureEl = document.getElementById("reading-unsure");
  const readingDigitsEl = document.getElementById("reading-digits");
  const readingStatusEl = document.getElementById("reading-status");
  const modeButtons = { digit: document.getElementById("mode-digit"), number: document.getElementById("mode-number") };
  let mode = "digit"; // "digit": one digit, /v1/predict; "number": a whole number, /v1/read

  const INK = "#ffffff";
  const PAPER = "#111424";
  const LIVE_INTERVAL_MS = 200; // at most this often while a stroke is in progress

  let drawing = false;
  let hasInk = false;
  let last = null; // last point of the current stroke, canvas coordinates
  let inFlight = false; // one request at a time; a newer drawing waits in `pending`
  let pending = false;
  let lastSent = 0;
  let liveTimer = null;
  let generation = 0; // bumped by Clear: answers to older requests are dropped

  // Ten probability rows, built once.
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.className = "bar-row";
    li.dataset.digit = String(d);
    li.innerHTML = `<span class="bar-label">${d}</span><span class="bar-track"><span class="bar-fill"></span></span>` +
      `<span class="bar-value">0%</span>`;
    barsEl.appendChild(li);
    bars.push({ row: li, fill: li.querySelector(".bar-fill"), value: li.querySelector(".bar-value") });
  }

  function resetPad() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = pad.height / 14; // about MNIST's stroke relative to the digit box
  }

  function setBusy(busy) {
    // Read by tests and assistive tech: "true" while a prediction request is outstanding.
    result.setAttribute("aria-busy", busy ? "true" : "false");
    reading.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function setStatus(text, isError = false) {
    const el = mode === "number" ? readingStatusEl : statusEl;
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  function showNoReading(message) {
    reading.dataset.state = "empty";
    numberEl.textContent = "–";
    readingConfEl.textContent = message;
    readingUnsureEl.hidden = true;
    readingDigitsEl.replaceChildren();
    boxesCtx.clearRect(0, 0, boxes.width, boxes.height);
  }

  function setMode(next) {
    mode = next;
    layout.dataset.mode = next;
    for (const [name, btn] of Object.entries(modeButtons)) btn.setAttribute("aria-pressed", String(name === next));
    const wide = next === "number";
    pad.width = boxes.width = wide ? 840 : 280;
    pad.height = boxes.height = 280;
    pad.setAttribute("aria-label", wide ? "Drawing area: write a number" : "Drawing area: draw one digit, 0 to 9");
    titleEl.textContent = wide ? "Your number" : "Your digit";
    result.hidden = wide;
    reading.hidden = !wide;
    clearAll();
  }

  function showEmpty(message) {
    result.dataset.state = "empty";
    digitEl.textContent = "–";
    confEl.textContent = message;
    unsureEl.hidden = true;
    for (const b of bars) {
      b.fill.style.width = "0%";
      b.value.textContent = "0%";
      b.row.classList.remove("top");
    }
    seenCtx.clearRect(0, 0, 28, 28);
  }

  function clearAll() {
    generation++;
    pending = false;
    clearTimeout(liveTimer);
    drawing = false;
    hasInk = false;
    last = null;
    resetPad();
    hintEl.classList.remove("hidden");
    uploadEl.value = "";
    showEmpty("Draw a digit to start");
    showNoReading("Write a number to start");
    setStatus("");
  }

  function pct(p) {
    return p >= 0.995 ? "100%" : p < 0.005 ? (p > 0 ? "<1%" : "0%") : `${Math.round(p * 100)}%`;
  }

  function drawSeen(image) {
    const data = seenCtx.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      for (let c = 0; c < 28; c++) {
        const v = Math.round(Math.max(0, Math.min(1, image[r][c])) * 255);
        const i = (r * 28 + c) * 4;
        data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
        data.data[i + 3] = 255;
      }
    }
    seenCtx.putImageData(data, 0, 0);
  }

  function render(p) {
    drawSeen(p.image);
    if (p.empty || p.digit === null) {
      showEmpty("No digit found: draw bigger or darker");
      drawSeen(p.image);
      return;
    }
    const order = p.probabilities.map((v, d) => [v, d]).sort((a, b) => b[0] - a[0]);
    const notDigit = p.status === "not_a_digit";
    result.dataset.state = notDigit ? "notdigit" : p.unsure ? "unsure" : "ready";
    digitEl.textContent = notDigit ? "?" : String(p.digit);
    confEl.textContent = notDigit ? "That does not look like a digit" : `${pct(p.confidence)} sure it's a ${p.digit}`;
    unsureEl.hidden = !p.unsure;
    unsureEl.textContent = notDigit ? "Not a digit" : p.unsure ? `Not sure: maybe ${order[1][1]}?` : "";
    p.probabilities.forEach((v, d) => {
      bars[d].fill.style.width = `${(v * 100).toFixed(1)}%`;
      bars[d].value.textContent = pct(v);
      bars[d].row.classList.toggle("top", d === p.digit);
    });
  }

  function drawDigit(ctx2d, image) {
    const data = ctx2d.createImageData(28, 28);
    for (let r = 0; r < 28; r++) {
      for (let c = 0; c < 28; c++) {
        const v = Math.round(Math.max(0, Math.min(1, image[r][c])) * 255);
        const i = (r * 28 + c) * 4;
        data.data[i] = data.data[i + 1] = data.data[i + 2] = v;
        data.data[i + 3] = 255;
      }
    }
    ctx2d.putImageData(data, 0, 0);
  }

  function renderReading(p, scale) {
    // scale: pad pixels per input pixel (1 for the canvas itself; a fitted photo's factor otherwise)
    boxesCtx.clearRect(0, 0, boxes.width, boxes.height);
    readingDigitsEl.replaceChildren();
    if (!p.digits.length) {
      showNoReading(p.marks.length ? "No digits found, only marks that are not digits" : "No digits found: write bigger or darker");
      return;
    }
    reading.dataset.state = p.unsure ? "unsure" : "ready";
    numberEl.textContent = p.number;
    readingConfEl.textContent = `${pct(p.confidence)} sure it reads ${p.number}`;
    readingUnsureEl.hidden = !p.unsure;
    boxesCtx.lineWidth = 3;
    boxesCtx.font = "600 22px system-ui, sans-serif";
    for (const d of p.digits) {
      const [x0, y0, x1, y1] = d.box.map((v) => v * scale.k);
      const colour = d.confidence < 0.9 ? "#f6c66b" : "#7ee2a8";
      boxesCtx.strokeStyle = boxesCtx.fillStyle = colour;
      boxesCtx.strokeRect(x0 + scale.dx, y0 + scale.dy, x1 - x0, y1 - y0);
      boxesCtx.fillText(String(d.digit), x0 + scale.dx + 2, Math.max(20, y0 + scale.dy - 6));
      const li = document.createElement("li");
      li.className = "digit-card" + (d.confidence < 0.9 ? " low" : "");
      const seenDigit = document.createElement("canvas");
      seenDigit.width = seenDigit.height = 28;
      drawDigit(seenDigit.getContext("2d"), d.image);
      const b = document.createElement("b");
      b.textContent = String(d.digit);
      const conf = document.createElement("span");
      conf.textContent = pct(d.confidence);
      li.append(seenDigit, b, conf);
      readingDigitsEl.append(li);
    }
  }

  async function post(body, gen, scale = { k: 1, dx: 0, dy: 0 }) {
    const t0 = performance.now();
    const route = mode === "number" ? "/v1/read" : "/v1/predict";
    const res = await fetch(route, { method: "POST", body });
    let payload = null;
    try {
      payload = await res.json();
    } catch {
      payload = null;
    }
    if (gen !== generation) return; // cleared meanwhile
    if (!res.ok) {
      const msg = payload && payload.error ? payload.error.message : `HTTP ${res.status}`;
      (mode === "number" ? reading : result).dataset.state = "error";
      setStatus(msg, true);
      return;
    }
    if (mode === "number") renderReading(payload, scale);
    else render(payload);
    setStatus(`Answered in ${Math.round(performance.now() - t0)} ms`);
  }

  function canvasBlob() {
    return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  }

  async function predictCanvas() {
    if (!hasInk) return;
    if (inFlight) {
      pending = true;
      return;
    }
    inFlight = true;
    pending = false;
    setBusy(true);
    lastSent = performance.now();
    const gen = generation;
    try {
      const blob = await canvasBlob();
      const form = new FormData();
      form.append("file", blob, "canvas.png");
      await post(form, gen);
    } catch (err) {
      if (gen === generation) setStatus(`Cannot reach the server (${err.message})`, true);
    } finally {
      inFlight = false;
      if (pending && hasInk) predictCanvas();
      else setBusy(false);
    }
  }

  function scheduleLive() {
    // Throttled while drawing: send now if the last request is old enough, else once the gap has passed.
    const wait = LIVE_INTERVAL_MS - (performance.now() - lastSent);
    clearTimeout(liveTimer);
    if (wait <= 0) predictCanvas();
    else liveTimer = setTimeout(predictCanvas, wait);
  }

  function point(e) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) / rect.width) * pad.width,
      y: ((e.clientY - rect.top) / rect.height) * pad.height,
    };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, Math.PI * 2);
    ctx.fill();
  }

  function lineTo(p) {
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }

  pad.addEventListener("pointerdown", (e) => {
    if (e.button !== undefined && e.button > 0) return; // left button / touch / pen only
    e.preventDefault();
    if (pad.dataset.photo) {
      // A photo was shown here: start a fresh drawing.
      delete pad.dataset.photo;
      resetPad();
    }
    pad.setPointerCapture(e.pointerId);
    drawing = true;
    hasInk = true;
    hintEl.classList.add("hidden");
    last = point(e);
    dot(last);
    scheduleLive();
  });

  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    e.preventDefault();
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) lineTo(point(ev));
    scheduleLive();
  });

  function endStroke(e) {
    if (!drawing) return;
    drawing = false;
    last = null;
    if (pad.hasPointerCapture(e.pointerId)) pad.releasePointerCapture(e.pointerId);
    clearTimeout(liveTimer);
    predictCanvas(); // the final stroke, right away
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  document.getElementById("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") clearAll();
  });

  uploadEl.addEventListener("change", async () => {
    const file = uploadEl.files && uploadEl.files[0];
    if (!file) return;
    clearAll();
    const gen = generation;
    // Show the photo on the pad (fitted), so the person sees what was classified.
    let scale = { k: 1, dx: 0, dy: 0 };
    try {
      const bitmap = await createImageBitmap(file);
      const s = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
      const w = bitmap.width * s;
      const h = bitmap.height * s;
      ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      scale = { k: s, dx: (pad.width - w) / 2, dy: (pad.height - h) / 2 }; // boxes come in photo pixels
      pad.dataset.photo = "1";
      hintEl.classList.add("hidden");
    } catch {
      // The browser cannot preview it; the server will still say what it thinks of the file.
    }
    setStatus("Reading the photo…");
    const form = new FormData();
    form.append("file", file, file.name);
    setBusy(true);
    try {
      await post(form, gen, scale);
    } catch (err) {
      setStatus(`Cannot reach the server (${err.message})`, true);
    } finally {
      setBusy(false);
    }
  });

  modeButtons.digit.addEventListener("click", () => setMode("digit"));
  modeButtons.number.addEventListener("click", () => setMode("number"));

  // The model's name for the footer.
  fetch("/readyz")
    .then((r) => r.json())
    .then((j) => {
      document.getElementById("model").textContent = j.model
        ? `model: ${j.model.name} ${j.model.version}` : "model: loading…";
    })
    .catch(() => {});

  clearAll();
})();
