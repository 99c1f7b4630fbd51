// digitnet draw-a-digit page: pointer drawing → PNG → POST /v1/predict → digit, bars, model view.
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
    ctx.lineWidth = pad.width / 14; // about MNIST's stroke relative to the digit box
  }

  function setBusy(busy) {
    // Read by tests and assistive tech: "true" while a prediction request is outstanding.
    result.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function setStatus(text, isError = false) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", isError);
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
    result.dataset.state = p.unsure ? "unsure" : "ready";
    digitEl.textContent = String(p.digit);
    confEl.textContent = `${pct(p.confidence)} sure it's a ${p.digit}`;
    unsureEl.hidden = !p.unsure;
    unsureEl.textContent = p.unsure ? `Not sure: maybe ${order[1][1]}?` : "";
    p.probabilities.forEach((v, d) => {
      bars[d].fill.style.width = `${(v * 100).toFixed(1)}%`;
      bars[d].value.textContent = pct(v);
      bars[d].row.classList.toggle("top", d === p.digit);
    });
  }

  async function post(body, gen) {
    const t0 = performance.now();
    const res = await fetch("/v1/predict", { method: "POST", body });
    let payload = null;
    try {
      payload = await res.json();
    } catch {
      payload = null;
    }
    if (gen !== generation) return; // cleared meanwhile
    if (!res.ok) {
      const msg = payload && payload.error ? payload.error.message : `HTTP ${res.status}`;
      result.dataset.state = "error";
      setStatus(msg, true);
      return;
    }
    render(payload);
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
    try {
      const bitmap = await createImageBitmap(file);
      const s = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
      const w = bitmap.width * s;
      const h = bitmap.height * s;
      ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
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
      await post(form, gen);
    } catch (err) {
      setStatus(`Cannot reach the server (${err.message})`, true);
    } finally {
      setBusy(false);
    }
  });

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
