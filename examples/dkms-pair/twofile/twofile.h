/* SPDX-License-Identifier: GPL-2.0 */
#ifndef TWOFILE_H
#define TWOFILE_H
int twofile_answer(int a, int b);
#endif
