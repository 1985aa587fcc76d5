// SPDX-License-Identifier: Apache-2.0
// pocketflow report: builds the page from the JSON block #pf-data with Chart.js (inlined above).
'use strict';
(function () {
  const DATA = JSON.parse(document.getElementById('pf-data').textContent);
  const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2',
    '#17becf', '#bcbd22', '#7f7f7f'];
  const charts = [];
  Chart.defaults.animation = false;  // drawn at once: static, printable, testable
  Chart.defaults.responsive = true;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.font.size = 12;
  Chart.defaults.plugins.legend.labels.boxWidth = 14;

  // ---- small helpers ----------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const isNum = (v) => typeof v === 'number' && isFinite(v);
  function count(n) {
    if (!isNum(n)) return '–';
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(2) + 'G';
    if (a >= 1e6) return (n / 1e6).toFixed(2) + 'M';
    if (a >= 1e3) return (n / 1e3).toFixed(1) + 'k';
    return String(Math.round(n * 100) / 100);
  }
  function bytes(n) {
    if (!isNum(n)) return '–';
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(2) + ' MiB';
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + ' KiB';
    return n + ' B';
  }
  const fixed = (v, d) => (isNum(v) ? v.toFixed(d) : '–');
  const color = (i) => PALETTE[i % PALETTE.length];
  function fade(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }
  function table(headers, rows, textColumns) {
    const t = el('table');
    t.append(el('tr', {}, ...headers.map((h) => el('th', {}, h))));
    for (const r of rows) {
      const tr = el('tr');
      r.forEach((cell, i) => {
        const td = el('td', textColumns && textColumns.includes(i) ? { class: 'text' } : {});
        if (cell instanceof Node) td.append(cell); else td.textContent = cell;
        tr.append(td);
      });
      t.append(tr);
    }
    return t;
  }
  function chart(parent, kind, title, config, wide) {
    const canvas = el('canvas');
    const fig = el('figure', { class: 'chart' + (wide ? ' wide' : ''), 'data-kind': kind },
      el('figcaption', {}, title), el('div', { class: 'canvas-wrap' }, canvas));
    parent.append(fig);
    try {
      charts.push({ chart: new Chart(canvas, config), figure: fig });
    } catch (e) {
      window.pfErrors.push(`chart "${title}": ${e.message}`);
    }
  }
  const axis = (text, extra) => Object.assign({ title: { display: true, text } }, extra || {});

  // ---- the runs table and the comparison plots ----------------------------------------------
  const runs = DATA.runs;
  const finished = runs.filter((r) => r.status === 'ok' && r.metrics);
  document.getElementById('meta').textContent =
    `pocketflow ${DATA.version} · ${DATA.generated} · ${runs.length} run(s)` +
    (finished.length < runs.length ? `, ${runs.length - finished.length} not finished` : '') +
    ` · from ${DATA.inputs.join(', ')}`;
  const main = document.getElementById('report');

  function overview() {
    const s = el('section', { id: 'overview' }, el('h2', {}, 'Runs'));
    const hasLatency = finished.some((r) => isNum(r.metrics.latency_ms));
    const headers = ['run', 'status', 'test top-1 %', 'val top-1 %', 'MACs', 'of original',
      'params', 'weights', 'smaller', hasLatency ? 'latency ms' : null, 'time s', 'Pareto']
      .filter((h) => h !== null);
    const rows = runs.map((r) => {
      const m = r.metrics || {};
      const status = el('span', { class: 'status-' + r.status }, r.status);
      const front = r.pareto ? Object.keys(r.pareto).map((k) => ({ macs: 'MACs',
        latency_ms: 'latency', weight_bytes: 'size' }[k] || k)).join(', ') : '';
      const row = [r.name, status, fixed(m.top1, 2), fixed(m.val_top1, 2), count(m.macs),
        isNum(m.macs) && isNum(m.macs_before) ? (100 * m.macs / m.macs_before).toFixed(1) + '%' : '–',
        count(m.params), bytes(m.weight_bytes),
        isNum(m.compression) ? m.compression.toFixed(2) + '×' : '–'];
      if (hasLatency) row.push(fixed(m.latency_ms, 3));
      row.push(fixed(isNum(m.wall_seconds) ? m.wall_seconds : m.seconds, 1));
      row.push(el('span', { class: 'pareto' }, front));
      return row;
    });
    s.append(table(headers, rows, [0]));
    for (const r of runs.filter((x) => x.error)) {
      s.append(el('p', { class: 'error' }, `${r.name}: ${r.error}`));
    }
    if (DATA.sweeps.length) {
      s.append(el('p', { class: 'note' }, 'Sweeps: ' +
        DATA.sweeps.map((w) => `${w.dir} (${w.runs.length} runs)`).join(', ')));
    }
    main.append(s);
    // Accuracy against each cost, with the Pareto front (no run cheaper and at least as accurate).
    const costs = [['macs', 'MACs', 'Top-1 against MACs', count],
      ['latency_ms', 'latency (ms, LibTorch)', 'Top-1 against latency', (v) => v.toFixed(3)],
      ['weight_bytes', 'stored weight bytes', 'Top-1 against model size', bytes]];
    // Sections are in the document before their charts are made: Chart.js draws a detached
    // canvas only later, once it is attached.
    const grid = el('div', { class: 'charts' });
    const comparison = el('section', { id: 'comparison' }, el('h2', {}, 'Accuracy against cost'), grid);
    main.append(comparison);
    for (const [key, label, title, format] of costs) {
      const pts = runs.map((r, i) => ({ r, i }))
        .filter(({ r }) => r.status === 'ok' && r.metrics && isNum(r.metrics[key]) &&
          isNum(r.metrics.top1))
        .map(({ r, i }) => ({ x: r.metrics[key], y: r.metrics.top1, name: r.name, index: i }));
      if (pts.length < 2) continue;
      const front = (DATA.pareto[key] || []).map((i) => pts.find((p) => p.index === i))
        .filter((p) => p).sort((a, b) => a.x - b.x);
      chart(grid, 'pareto-' + key, title, {
        type: 'scatter',
        data: { datasets: [
          { label: 'runs', data: pts, backgroundColor: fade(color(0), 0.75), pointRadius: 5 },
          { label: 'Pareto front', data: front, showLine: true, borderColor: color(1),
            backgroundColor: color(1), pointRadius: 6, pointStyle: 'rectRot', borderWidth: 2 }] },
        options: {
          scales: { x: axis(label, { ticks: { callback: (v) => format(v) } }),
            y: axis('test top-1 %') },
          plugins: { tooltip: { callbacks: {
            label: (c) => `${c.raw.name}: ${c.raw.y.toFixed(2)}% at ${format(c.raw.x)}` } } },
        },
      });
    }
    if (!grid.childElementCount) comparison.remove();
  }

  // ---- one run ----------------------------------------------------------------------------------
  function curves(parent, run) {
    if (!run.curves || !run.curves.length) return;
    const datasets = [];
    run.curves.forEach((stage, i) => {
      const c = color(i);
      const xy = (xs, ys) => xs.map((x, k) => ({ x, y: ys[k] })).filter((p) => isNum(p.y));
      datasets.push({ label: `${stage.stage} train top-1`, data: xy(stage.steps.x, stage.steps.top1),
        borderColor: c, backgroundColor: c, pointRadius: 0, borderWidth: 1.5, yAxisID: 'y' });
      datasets.push({ label: `${stage.stage} val top-1`, data: xy(stage.epochs.x, stage.epochs.val_top1),
        borderColor: c, backgroundColor: '#fff', pointRadius: 4, borderWidth: 2, yAxisID: 'y',
        pointStyle: 'circle', showLine: true, borderDash: [4, 3] });
      datasets.push({ label: `${stage.stage} train loss`, data: xy(stage.steps.x, stage.steps.loss),
        borderColor: fade(c, 0.45), backgroundColor: fade(c, 0.45), pointRadius: 0,
        borderWidth: 1, yAxisID: 'loss' });
    });
    chart(parent, 'curves', 'Training and fine-tuning: top-1 (running train, val per epoch) and loss', {
      type: 'line',
      data: { datasets },
      options: {
        parsing: false,
        scales: { x: axis('step (all stages)', { type: 'linear' }), y: axis('top-1 %'),
          loss: axis('train loss', { position: 'right', grid: { drawOnChartArea: false } }) },
        plugins: { legend: { position: 'bottom' } },
      },
    }, true);
  }

  function layers(parent, run) {
    if (!run.after) return;
    const after = run.after.layers;
    const before = {};
    for (const l of (run.before ? run.before.layers : [])) before[l.name] = l;
    const labels = after.map((l) => l.name);
    const hasBefore = !!run.before;
    const channelSets = [];
    if (hasBefore) {
      channelSets.push({ label: 'original', data: after.map((l) => (before[l.name] || {}).out),
        backgroundColor: '#c7ccd4' });
    }
    channelSets.push({ label: hasBefore ? 'kept' : 'channels', data: after.map((l) => l.out),
      backgroundColor: color(0) });
    chart(parent, 'channels', 'Output channels per layer' + (hasBefore ? ' (kept against original)' : ''), {
      type: 'bar',
      data: { labels, datasets: channelSets },
      options: { scales: { x: { ticks: { autoSkip: false, maxRotation: 70, minRotation: 45 } },
        y: axis('channels / features') },
      plugins: { tooltip: { callbacks: { afterLabel: (c) => {
        const b = before[labels[c.dataIndex]];
        return b && c.datasetIndex === channelSets.length - 1 ?
          `${(100 * after[c.dataIndex].out / b.out).toFixed(1)}% kept` : '';
      } } } } },
    });
    if (after.some((l) => l.sparsity > 0)) {
      chart(parent, 'sparsity', 'Weight sparsity per layer (zeros %)', {
        type: 'bar',
        data: { labels, datasets: [{ label: 'zeros %', data: after.map((l) => 100 * l.sparsity),
          backgroundColor: color(2) }] },
        options: { scales: { x: { ticks: { autoSkip: false, maxRotation: 70, minRotation: 45 } },
          y: axis('zeros %', { min: 0, max: 100 }) } },
      });
    }
    if (after.some((l) => l.bits < 32)) {
      chart(parent, 'bits', 'Weight bits per layer', {
        type: 'bar',
        data: { labels, datasets: [{ label: 'bits', data: after.map((l) => l.bits),
          backgroundColor: after.map((l) => (l.codebook ? color(4) : color(3))) }] },
        options: { scales: { x: { ticks: { autoSkip: false, maxRotation: 70, minRotation: 45 } },
          y: axis('bits (codebook: violet)', { min: 0, max: 32 }) },
        plugins: { legend: { display: false } } },
      });
    }
  }

  function searches(parent, run) {
    (run.searches || []).forEach((s, i) => {
      const pts = s.episode.map((e, k) => ({ x: e, y: s.reward[k] })).filter((p) => isNum(p.y));
      let best = -Infinity;
      const bestSoFar = pts.map((p) => ({ x: p.x, y: (best = Math.max(best, p.y)) }));
      chart(parent, 'search', `Search reward per episode (${s.file})`, {
        type: 'scatter',
        data: { datasets: [
          { label: 'reward', data: pts, backgroundColor: fade(color(i), 0.6), pointRadius: 3 },
          { label: 'best so far', data: bestSoFar, showLine: true, borderColor: color(1),
            pointRadius: 0, borderWidth: 2, stepped: true }] },
        options: { scales: { x: axis('episode'), y: axis('reward') } },
      });
    });
  }

  function scalars(obj) {
    return Object.entries(obj || {}).filter(([, v]) => v === null || typeof v !== 'object')
      .map(([k, v]) => [k, isNum(v) && !Number.isInteger(v) ? v.toPrecision(6) : String(v)]);
  }

  function runSection(run, index) {
    const s = el('section', { id: 'run-' + index, 'data-run': run.name },
      el('h2', {}, run.name, ' ', el('span', { class: 'status-' + run.status }, `(${run.status})`)),
      el('p', { class: 'note' }, run.dir));
    main.append(s);
    if (run.status !== 'ok') {
      s.append(el('p', { class: 'error' }, run.error || 'no result'));
      return;
    }
    const grid = el('div', { class: 'charts' });
    s.append(grid);
    curves(grid, run);
    layers(grid, run);
    searches(grid, run);
    for (const note of [run.before_note && `per-layer original: ${run.before_note}`,
      run.layers_note && `per-layer view: ${run.layers_note}`]) {
      if (note) s.append(el('p', { class: 'note' }, note));
    }
    const tables = el('div', { class: 'tables' });
    const top = el('div', {}, el('h3', {}, 'Summary'), table(['key', 'value'], scalars(run.summary), [1]));
    tables.append(top);
    (run.summary.stages || []).forEach((st, k) => {
      tables.append(el('div', {}, el('h3', {}, `Stage ${k}: ${st.learner}`),
        table(['key', 'value'], scalars(st), [1])));
    });
    if (run.after) {
      const before = {};
      for (const l of (run.before ? run.before.layers : [])) before[l.name] = l;
      const rows = run.after.layers.map((l) => {
        const b = before[l.name];
        return [l.name, l.op, b ? `${b.out} → ${l.out}` : String(l.out), count(l.params),
          count(l.macs), bytes(l.bytes), (100 * l.sparsity).toFixed(1), l.bits];
      });
      tables.append(el('div', {}, el('h3', {}, 'Layers' + (run.before ? ` (original: ${run.before.source})` : '')),
        table(['layer', 'op', 'channels', 'params', 'MACs', 'bytes', 'zeros %', 'bits'], rows)));
    }
    s.append(tables);
    if (run.config) {
      s.append(el('details', {}, el('summary', {}, 'resolved job (resolved_config.yaml)'),
        el('pre', {}, run.config)));
    }
  }

  overview();
  runs.forEach(runSection);

  // ---- what the screenshot test reads -----------------------------------------------------------
  function painted(canvas) {
    const w = canvas.width, h = canvas.height;
    if (!w || !h) return false;
    const pixels = canvas.getContext('2d').getImageData(0, 0, w, h).data;
    let inked = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked++;
    return inked > 200;
  }
  let paintedCount = 0;
  for (const c of charts) {
    const ok = painted(c.chart.canvas);
    c.figure.setAttribute('data-painted', ok ? '1' : '0');
    if (ok) paintedCount++;
  }
  document.body.setAttribute('data-charts', String(charts.length));
  document.body.setAttribute('data-painted', String(paintedCount));
  document.body.setAttribute('data-errors', String(window.pfErrors.length));
  document.body.setAttribute('data-status', 'rendered');
  document.getElementById('render-status').textContent =
    `${charts.length} charts drawn with Chart.js ${Chart.version}` +
    (window.pfErrors.length ? ` · errors: ${window.pfErrors.join('; ')}` : '');
})();
